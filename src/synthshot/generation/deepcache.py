"""DeepCache (Ma, Fang and Wang, CVPR 2024) for diffusers' `UNet2DConditionModel`: reuse the
U-Net's deep features across denoising steps and run only its shallowest blocks in between.

The U-Net's skip connections give a shallow path from the input to the output: `conv_in`, the
first (resnet, attention) pair of the first down block, and the last pairs of the last up block,
whose skip inputs are exactly `conv_in`'s output and that first pair's output. Everything else
(the rest of the down blocks, the mid block, the other up blocks and the first pairs of the last
up block) feeds the shallow path through one tensor: the hidden state entering the last up
block's pair that takes the first pair's skip. A full step runs the whole U-Net and keeps that
tensor; a shallow step recomputes only the shallow path and takes the deep part from the kept
tensor. This is DeepCache's branch 0 (`cache_layer_id=0, cache_block_id=0` in its Stable Diffusion
pipeline), the setting its paper uses for Stable Diffusion; full steps every k steps is its
uniform schedule.

Written here rather than taken from elsewhere. diffusers 0.42's caching hooks do not fit:
FirstBlockCache, MagCache and SeaCache hook the top-level `blocks`/`transformer_blocks` list of a
transformer (a U-Net has none); FasterCache splits the batch into an unconditional and a
conditional half (DIPSY's batch has four branches); PyramidAttentionBroadcast and TaylorSeer reuse
attention outputs layer by layer, so the U-Net's convolutions still run at every step; none
skips a U-Net's deep branch. The DeepCache package (0.1.1, 2023) patches the blocks' `forward`
methods with closures and finds the step by looking the timestep up in the scheduler, which fits
neither the guidance interval's changing batch nor torch.compile.

`DeepCacheUNet` holds no state between calls: `full` returns the noise prediction and the deep
feature, `shallow` takes the feature back; the caller decides which step is which and keeps the
feature (`synthshot.generation.guidance.step_plan`). The whole batch, all guidance branches
together, goes through the same path at every step, so the branches stay consistent.
"""

from __future__ import annotations

import torch

from synthshot.errors import ModelError


class DeepCacheUNet:
    """Full and shallow forward passes of a `UNet2DConditionModel`, built from its own blocks.

    `full(...)` computes exactly what `unet(...).sample` computes (the same modules in the same
    order) and also returns the deep feature; `shallow(..., feature)` with the feature of the same
    input gives the same prediction again, and with the feature of an earlier step, DeepCache's
    approximation."""

    def __init__(self, unet):
        config = unet.config
        unsupported = {
            "class_embed_type": config.class_embed_type,
            "addition_embed_type": config.addition_embed_type,
            "time_cond_proj_dim": config.time_cond_proj_dim,
        }
        used = [f"{key}={value!r}" for key, value in unsupported.items() if value is not None]
        if used:
            raise ModelError(f"DeepCache supports Stable Diffusion 1.x/2.x U-Nets; this one sets {', '.join(used)}")
        if any(getattr(block, "s1", None) for block in unet.up_blocks):
            raise ModelError("DeepCache does not combine with FreeU: disable FreeU first")
        first, last = unet.down_blocks[0], unet.up_blocks[-1]
        if len(last.resnets) < 2 or len(first.resnets) < 1:
            raise ModelError("DeepCache needs a U-Net whose first down block and last up block have resnets")
        self.unet = unet
        # The last up block's pair that takes the first down pair's output as its skip input:
        # pair j pops skip number len(resnets) - 1 - j of (conv_in, first pair, second pair, ...).
        self.entry = len(last.resnets) - 2

    # ------------------------------------------------------------------------------ shared parts
    def _embed(self, sample, timestep, encoder_hidden_states, added_cond_kwargs):
        unet = self.unet
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        states = unet.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
        )
        return sample, emb, states

    @staticmethod
    def _pair(block, index: int, hidden, emb, states):
        hidden = block.resnets[index](hidden, emb)
        attentions = getattr(block, "attentions", None)
        if attentions is not None:
            hidden = attentions[index](hidden, encoder_hidden_states=states, return_dict=False)[0]
        return hidden

    def _last_up_block(self, hidden, skips: tuple, emb, states, start: int):
        """Pairs `start`... of the last up block; `skips` ends with the skip input of pair `start`."""
        block = self.unet.up_blocks[-1]
        for index in range(start, len(block.resnets)):
            hidden = torch.cat([hidden, skips[-1]], dim=1)
            skips = skips[:-1]
            hidden = self._pair(block, index, hidden, emb, states)
        if block.upsamplers is not None:
            for upsampler in block.upsamplers:
                hidden = upsampler(hidden)
        return hidden

    def _out(self, sample):
        unet = self.unet
        if unet.conv_norm_out:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        return unet.conv_out(sample)

    # ---------------------------------------------------------------------------------- passes
    def full(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
        """The whole U-Net: (noise prediction, deep feature)."""
        unet = self.unet
        sample, emb, states = self._embed(sample, timestep, encoder_hidden_states, added_cond_kwargs)
        up_factor = 2**unet.num_upsamplers
        forward_upsample_size = any(size % up_factor for size in sample.shape[-2:])
        sample = unet.conv_in(sample)
        skips = (sample,)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=states)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            skips += res
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                sample = unet.mid_block(sample, emb, encoder_hidden_states=states)
            else:
                sample = unet.mid_block(sample, emb)
        for block in unet.up_blocks[:-1]:
            res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if forward_upsample_size else None
            if getattr(block, "has_cross_attention", False):
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                               encoder_hidden_states=states, upsample_size=upsample_size)
            else:
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)
        # The last up block pair by pair, keeping the hidden state entering pair `entry`.
        last = unet.up_blocks[-1]
        for index in range(self.entry):
            sample = torch.cat([sample, skips[-1]], dim=1)
            skips = skips[:-1]
            sample = self._pair(last, index, sample, emb, states)
        feature = sample
        sample = self._last_up_block(sample, skips, emb, states, self.entry)
        return self._out(sample), feature

    def shallow(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, feature):
        """Only the shallow path, with the deep part taken from `feature` (of an earlier full step;
        its first rows when this batch has fewer)."""
        unet = self.unet
        sample, emb, states = self._embed(sample, timestep, encoder_hidden_states, added_cond_kwargs)
        sample = unet.conv_in(sample)
        first = self._pair(unet.down_blocks[0], 0, sample, emb, states)
        if feature.shape[0] != sample.shape[0]:
            feature = feature[: sample.shape[0]]
        hidden = self._last_up_block(feature, (sample, first), emb, states, self.entry)
        return self._out(hidden)
