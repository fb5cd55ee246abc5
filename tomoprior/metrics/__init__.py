"""Reconstruction metrics: PSNR, 3D SSIM, MAE, bone Dice, bone surface distances and
projection consistency (work in progress; see issue 5)."""
