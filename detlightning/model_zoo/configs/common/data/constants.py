# Pixel statistics the models normalise their inputs with (0-255 images).
constants = dict(
    # ImageNet statistics in RGB order, for backbones pre-trained with torchvision-style normalisation
    imagenet_rgb256_mean=[123.675, 116.28, 103.53],
    imagenet_rgb256_std=[58.395, 57.12, 57.375],
    # Caffe2/MSRA backbones: BGR input, mean subtraction only
    imagenet_bgr256_mean=[103.530, 116.280, 123.675],
    imagenet_bgr256_std=[1.0, 1.0, 1.0],
)
