"""One index rule: (k, j, i) array order everywhere, (i, j, k) only in the NIfTI-style affine()."""

import numpy as np
import pytest

import tomoprior as tp


@pytest.mark.parametrize("kji", [(0, 0, 0), (2, 3, 4), (1, 0, 3), (1.5, 2.25, 0.5)])
def test_array_affine_voxel_center_world_to_index_and_affine_agree(kji):
    grid = tp.VolumeGrid(shape=(3, 4, 5), spacing=(3.0, 2.0, 1.0), center=(10.0, -20.0, 30.0))
    k, j, i = kji
    xyz = np.asarray(grid.voxel_center(k, j, i))
    assert (grid.array_affine() @ np.r_[k, j, i, 1.0])[:3] == pytest.approx(xyz)  # array order
    assert (grid.affine() @ np.r_[i, j, k, 1.0])[:3] == pytest.approx(xyz)  # NIfTI order
    assert grid.world_to_index(xyz).tolist() == pytest.approx([k, j, i])
    assert np.linalg.inv(grid.array_affine())[:3] @ np.r_[xyz, 1.0] == pytest.approx([k, j, i])


def test_array_affine_indexes_the_array_as_stored():
    grid = tp.VolumeGrid(shape=(3, 4, 5), spacing=(3.0, 2.0, 1.0), center=(1.0, 2.0, 3.0))
    centres = grid.voxel_centers().numpy()  # (nz, ny, nx, 3)
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    idx = np.stack([k, j, i, np.ones_like(k)], axis=-1).astype(float)
    assert np.allclose(idx @ grid.array_affine().T[:, :3], centres)
