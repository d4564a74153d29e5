"""BasicVSR++ in the same-size variant that Lada uses, with mmagic's parameter names.

Why the names matter: Lada's released restoration weights (and the SPyNet weights) are mmagic state dicts;
keeping every module path identical (`spynet.basic_module.N.basic_module.M.conv`, `feat_extract.N`,
`deform_align.<branch>.conv_offset.N`, `backbone.<branch>.main.N`, `reconstruction`, `upsample1/2.upsample_conv`,
`conv_hr`, `conv_last`) lets those files load strictly, and lets Lada load what we export.

Shape of the computation (same as Lada's `BasicVSRPlusPlusNet`): a stride-2, stride-2 feature extractor brings
frames to 1/4 size; SPyNet estimates flow on a bicubic 1/4 copy of the input (so features and flows share a
grid); four propagation branches (backward/forward × 2) align the previous features by second-order flow-guided
deformable convolution (`torchvision.ops.deform_conv2d` with a modulation mask, as mmcv is not installable with
current torch); a reconstruction head brings features back to full size, and its output is added to the input.

Tensors are (n, t, 3, h, w) in [0, 1], BGR channel order (Lada feeds OpenCV frames), h and w multiples of 4
and at least 128. Lada insists on 256 (a 64-px quarter-size copy for the flow); 128 still gives SPyNet a
1-px top pyramid level and is what the embedded CPU default trains at, 4x cheaper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

BRANCHES = ("backward_1", "forward_1", "backward_2", "forward_2")
MIN_SIDE = 128


def flow_warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Warp `x` (n, c, h, w) by `flow` (n, h, w, 2) given in pixels (x, y), bilinear, align_corners=True."""
    _, _, h, w = x.shape
    gy, gx = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=x.dtype), torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij"
    )
    grid = torch.stack((gx, gy), dim=2) + flow
    # normalise pixel coordinates to [-1, 1] for grid_sample
    gx_n = 2.0 * grid[..., 0] / max(w - 1, 1) - 1.0
    gy_n = 2.0 * grid[..., 1] / max(h - 1, 1) - 1.0
    return F.grid_sample(x, torch.stack((gx_n, gy_n), dim=3), mode="bilinear", padding_mode=padding_mode, align_corners=True)


class ResidualBlockNoBN(nn.Module):
    def __init__(self, mid_channels: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        # Residual branches start small (kaiming × 0.1), as in mmagic, so a fresh stack is close to identity.
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class ResidualBlocksWithInputConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 64, num_blocks: int = 30):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Sequential(*[ResidualBlockNoBN(out_channels) for _ in range(num_blocks)]),
        )

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.main(feat)


class PixelShufflePack(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, scale_factor: int, upsample_kernel: int):
        super().__init__()
        self.scale_factor = scale_factor
        self.upsample_conv = nn.Conv2d(
            in_channels, out_channels * scale_factor * scale_factor, upsample_kernel, padding=(upsample_kernel - 1) // 2
        )
        nn.init.kaiming_normal_(self.upsample_conv.weight, a=0, mode="fan_in")
        nn.init.zeros_(self.upsample_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.upsample_conv(x), self.scale_factor)


class SPyNetConvModule(nn.Module):
    """mmcv's ConvModule reduced to what SPyNet uses; the `.conv` attribute keeps the checkpoint key."""

    def __init__(self, in_channels: int, out_channels: int, activation: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=1, padding=3)
        self.activate = nn.ReLU(inplace=True) if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.activate(x) if self.activate is not None else x


class SPyNetBasicModule(nn.Module):
    def __init__(self):
        super().__init__()
        channels = [(8, 32), (32, 64), (64, 32), (32, 16), (16, 2)]
        self.basic_module = nn.Sequential(
            *[SPyNetConvModule(i, o, activation=k < len(channels) - 1) for k, (i, o) in enumerate(channels)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(x)


class SPyNet(nn.Module):
    """Six-level pyramid flow network (no batch norm). `forward(ref, supp)` is the flow from ref to supp."""

    def __init__(self):
        super().__init__()
        self.basic_module = nn.ModuleList([SPyNetBasicModule() for _ in range(6)])
        # Buffers, so they are part of the state dict exactly as in mmagic's files.
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def _pyramid_flow(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        n, _, h, w = ref.shape
        refs, supps = [(ref - self.mean) / self.std], [(supp - self.mean) / self.std]
        for _ in range(5):
            refs.append(F.avg_pool2d(refs[-1], kernel_size=2, stride=2, count_include_pad=False))
            supps.append(F.avg_pool2d(supps[-1], kernel_size=2, stride=2, count_include_pad=False))
        refs, supps = refs[::-1], supps[::-1]
        flow = refs[0].new_zeros(n, 2, h // 32, w // 32)
        for level, (r, s) in enumerate(zip(refs, supps)):
            up = flow if level == 0 else F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            warped = flow_warp(s, up.permute(0, 2, 3, 1), padding_mode="border")
            flow = up + self.basic_module[level](torch.cat([r, warped, up], dim=1))
        return flow

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        h, w = ref.shape[2:]
        h_up, w_up = -(-h // 32) * 32, -(-w // 32) * 32
        ref = F.interpolate(ref, size=(h_up, w_up), mode="bilinear", align_corners=False)
        supp = F.interpolate(supp, size=(h_up, w_up), mode="bilinear", align_corners=False)
        flow = F.interpolate(self._pyramid_flow(ref, supp), size=(h, w), mode="bilinear", align_corners=False)
        scale = torch.tensor([w / w_up, h / h_up], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
        return flow * scale


OFFSET_BOUND = 1e4  # px: beyond any input side, so a bounded offset samples only padding


class SecondOrderDeformableAlignment(nn.Module):
    """Flow-guided deformable conv over [feat(t-1), feat(t-2)] with offsets predicted as residues of the flows.

    Own parameters `weight`, `bias` and `conv_offset.*` mirror mmcv's ModulatedDeformConv2d subclass in mmagic.
    """

    def __init__(self, in_channels: int, out_channels: int, deform_groups: int = 16, max_residue_magnitude: float = 10):
        super().__init__()
        self.out_channels = out_channels
        self.deform_groups = deform_groups
        self.max_residue_magnitude = max_residue_magnitude
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.uniform_(self.weight, -1.0 / (in_channels * 9) ** 0.5, 1.0 / (in_channels * 9) ** 0.5)
        self.conv_offset = nn.Sequential(
            nn.Conv2d(3 * out_channels + 4, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(out_channels, 27 * deform_groups, 3, 1, 1),
        )
        # Zero offsets/mask logits at start: the alignment begins as a plain flow warp.
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)

    def forward(self, x: torch.Tensor, extra_feat: torch.Tensor, flow_1: torch.Tensor, flow_2: torch.Tensor) -> torch.Tensor:
        out = self.conv_offset(torch.cat([extra_feat, flow_1, flow_2], dim=1))
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset = self.max_residue_magnitude * torch.tanh(torch.cat((o1, o2), dim=1))
        offset_1, offset_2 = torch.chunk(offset, 2, dim=1)
        # deform_conv2d wants (dy, dx) pairs; flows are (dx, dy), hence the flip.
        offset_1 = offset_1 + flow_1.flip(1).repeat(1, offset_1.size(1) // 2, 1, 1)
        offset_2 = offset_2 + flow_2.flip(1).repeat(1, offset_2.size(1) // 2, 1, 1)
        # A diverged model's NaN/inf offsets make torchvision's kernel index outside the input and kill the process
        # (a segfault, seen when a deliberately diverged run reached the report); offsets are bounded far outside
        # any frame instead, so a sane model's (finite, small) offsets -- and outputs -- are exactly Lada's.
        offset = torch.nan_to_num(torch.cat([offset_1, offset_2], dim=1), nan=0.0, posinf=OFFSET_BOUND, neginf=-OFFSET_BOUND)
        offset = offset.clamp(-OFFSET_BOUND, OFFSET_BOUND)
        return torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, padding=(1, 1), mask=torch.sigmoid(mask))


class BasicVSRPlusPlusNet(nn.Module):
    """Same-size BasicVSR++ (Lada's generator). `mid_channels` / `num_blocks` are the size knobs:
    Lada's released model is 64 / 15; the embedded CPU default uses a much smaller instance of the same code."""

    def __init__(self, mid_channels: int = 64, num_blocks: int = 15, max_residue_magnitude: float = 10):
        super().__init__()
        self.mid_channels = mid_channels
        self.num_blocks = num_blocks
        self.spynet = SPyNet()
        self.feat_extract = nn.Sequential(
            nn.Conv2d(3, mid_channels, 3, 2, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(mid_channels, mid_channels, 3, 2, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            ResidualBlocksWithInputConv(mid_channels, mid_channels, 5),
        )
        self.deform_align = nn.ModuleDict()
        self.backbone = nn.ModuleDict()
        for i, name in enumerate(BRANCHES):
            self.deform_align[name] = SecondOrderDeformableAlignment(
                2 * mid_channels, mid_channels, deform_groups=16, max_residue_magnitude=max_residue_magnitude
            )
            self.backbone[name] = ResidualBlocksWithInputConv((2 + i) * mid_channels, mid_channels, num_blocks)
        self.reconstruction = ResidualBlocksWithInputConv(5 * mid_channels, mid_channels, 5)
        self.upsample1 = PixelShufflePack(mid_channels, mid_channels, 2, upsample_kernel=3)
        self.upsample2 = PixelShufflePack(mid_channels, 64, 2, upsample_kernel=3)
        self.conv_hr = nn.Conv2d(64, 64, 3, 1, 1)
        self.conv_last = nn.Conv2d(64, 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)

    @property
    def config(self) -> dict:
        return {"arch": "BasicVSRPlusPlusNet", "mid_channels": self.mid_channels, "num_blocks": self.num_blocks}

    def _flows(self, lqs_small: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, c, h, w = lqs_small.shape
        a = lqs_small[:, :-1].reshape(-1, c, h, w)
        b = lqs_small[:, 1:].reshape(-1, c, h, w)
        backward = self.spynet(a, b).view(n, t - 1, 2, h, w)  # frame i -> i+1, used when propagating backward
        forward = self.spynet(b, a).view(n, t - 1, 2, h, w)  # frame i+1 -> i
        return forward, backward

    def _propagate(self, feats: dict, flows: torch.Tensor, name: str) -> None:
        n, steps, _, h, w = flows.shape
        frame_idx = list(range(steps + 1))
        flow_idx = list(range(-1, steps))
        if name.startswith("backward"):
            frame_idx = frame_idx[::-1]
            flow_idx = frame_idx
        out: list[torch.Tensor] = []
        feat_prop = flows.new_zeros(n, self.mid_channels, h, w)
        for i, idx in enumerate(frame_idx):
            current = feats["spatial"][idx]
            if i > 0:
                flow_1 = flows[:, flow_idx[i]]
                cond_1 = flow_warp(feat_prop, flow_1.permute(0, 2, 3, 1))
                feat_2 = torch.zeros_like(feat_prop)
                flow_2 = torch.zeros_like(flow_1)
                cond_2 = torch.zeros_like(cond_1)
                if i > 1:
                    feat_2 = out[-2]
                    flow_2 = flows[:, flow_idx[i - 1]]
                    flow_2 = flow_1 + flow_warp(flow_2, flow_1.permute(0, 2, 3, 1))
                    cond_2 = flow_warp(feat_2, flow_2.permute(0, 2, 3, 1))
                cond = torch.cat([cond_1, current, cond_2], dim=1)
                feat_prop = self.deform_align[name](torch.cat([feat_prop, feat_2], dim=1), cond, flow_1, flow_2)
            earlier = [feats[k][idx] for k in feats if k not in ("spatial", name)]
            feat_prop = feat_prop + self.backbone[name](torch.cat([current, *earlier, feat_prop], dim=1))
            out.append(feat_prop)
        feats[name] = out[::-1] if name.startswith("backward") else out

    def _reconstruct(self, lqs: torch.Tensor, feats: dict) -> torch.Tensor:
        outputs = []
        for i in range(lqs.size(1)):
            hr = torch.cat([feats["spatial"][i]] + [feats[name][i] for name in BRANCHES], dim=1)
            hr = self.reconstruction(hr)
            hr = self.lrelu(self.upsample1(hr))
            hr = self.lrelu(self.upsample2(hr))
            hr = self.lrelu(self.conv_hr(hr))
            outputs.append(self.conv_last(hr) + lqs[:, i])
        return torch.stack(outputs, dim=1)

    def forward(self, lqs: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = lqs.shape
        if h < MIN_SIDE or w < MIN_SIDE or h % 4 or w % 4:
            raise ValueError(f"BasicVSR++ input frames must be at least {MIN_SIDE}x{MIN_SIDE} and multiples of 4, got {h}x{w}")
        if t < 2:
            raise ValueError(f"BasicVSR++ needs at least 2 frames per clip, got {t}")
        small = F.interpolate(lqs.reshape(-1, c, h, w), scale_factor=0.25, mode="bicubic").view(n, t, c, h // 4, w // 4)
        spatial = self.feat_extract(lqs.reshape(-1, c, h, w))
        spatial = spatial.view(n, t, -1, *spatial.shape[2:])
        feats: dict[str, list[torch.Tensor]] = {"spatial": [spatial[:, i] for i in range(t)]}
        flows_forward, flows_backward = self._flows(small)
        for name in BRANCHES:
            self._propagate(feats, flows_backward if name.startswith("backward") else flows_forward, name)
        return self._reconstruct(lqs, feats)


# Module groups in the order the recipe names them; `reconstruction` etc. form the head that Stage 1 trains.
MODULE_GROUPS = ("spynet", "feat_extract", "deform_align", "backbone", "reconstruction", "upsample1", "upsample2", "conv_hr", "conv_last")


def group_of(param_name: str) -> str:
    return param_name.split(".", 1)[0]
