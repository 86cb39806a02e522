"""Training the temporal LLLite adapter (paper §III-A, §IV-A): teacher pairs, flow-matching objective, trainer.

Modules, one job each:
    pairs          the on-disk pair format (npz, no pickle): input frame, cond image, target
    teacher        teacher pairs from clips: the base model at K=4 per frame, then the flow-warped blend
    flow_matching  timestep sampling and the rectified-flow target, in the engine's scheduler conventions
    batches        which pairs make each micro-batch, and the step's noise and timesteps (all from the seed)
    checkpoint     adapter + AdamW state + JSON per step, and finding the one to resume from
    trainer        the loop: frozen U-Net / encoder / VAE, fp32 adapter on its hooks, AdamW, clipping
    plot           the loss-curve PNG
`stylecast train-adapter` (services/commands/train.py) drives them.
"""
