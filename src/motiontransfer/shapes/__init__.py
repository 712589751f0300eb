"""The shapes world and its model: a wing beside the method, not part of it.

    world       the synthetic world of one moving shape: clips, captions, ground truth
    training    training of the shipped text-to-video model (VAE, text encoder, UNet3D)
    classifier  the attribute classifier: which shape, colour and background a video shows
    tracking    segmentation and object tracks: where the object is, and how it moves
    report      the shipped model's quality report
    demo        `motiontransfer demo`: a transfer on a world clip, with both objects' paths
    weights/    the shipped model (`model/`, the core's default checkpoint) and the classifier (`classifier/`)
"""
