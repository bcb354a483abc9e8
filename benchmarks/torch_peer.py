"""The PyTorch peer of benchmarks/accelerator.py: the same network written in PyTorch, its
equivalence check against ours, and its timed rows.

It is the same architecture, shapes and FLOPs, not our weights: symmetric padding by concatenated
flipped slices, the window means by separable prefix sums (the JAX code reads one integral image),
the hand-written ConvLSTM with hard sigmoid, the IMC head and the LADN statistics in float32 and
the ConvLSTM's gates and states in float32, as in JAX. PyTorch is an optional dependency of the
benchmarks only (not in requirements.txt): `pip install torch`.
"""
from __future__ import annotations

import gc
import sys

from benchmarks import harness

CHECK_WIDTH_SCALE = 0.125  # the small configurations of the equivalence check

def torch_network(cfg):
    """The same network in PyTorch (NCHW tensors, OIHW kernels), from a ModelConfig."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mantra_jax.nn import featex, layers

    if cfg.anomaly != "tac" or not cfg.use_global or cfg.first_kernel != 5:
        raise ValueError("the PyTorch peer covers the released LADN (anomaly 'tac', global window, 5x5 b1c1)")

    def symmetric_pad(x, r):
        """numpy 'symmetric' padding (the edge pixel repeated in the mirror): not a torch pad mode."""
        if r == 0:
            return x
        x = torch.cat([x[:, :, :r].flip(2), x, x[:, :, -r:].flip(2)], dim=2)
        return torch.cat([x[:, :, :, :r].flip(3), x, x[:, :, :, -r:].flip(3)], dim=3)

    def box_mean(x, k):
        """Centred k x k mean over in-image pixels, by separable prefix sums."""
        r, s, counts = k // 2, x, []
        for dim in (2, 3):
            n = s.shape[dim]
            i = torch.arange(n, device=x.device)
            lo, hi = (i - r).clamp(min=0), (i + r).clamp(max=n - 1) + 1
            c = torch.cumsum(s, dim=dim)
            c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)
            s = c.index_select(dim, hi) - c.index_select(dim, lo)
            counts.append((hi - lo).to(x.dtype))
        return s / (counts[0][:, None] * counts[1][None, :])

    def hard_sigmoid(x):
        return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)

    def glorot(*shape_oihw):
        w = torch.empty(*shape_oihw)
        nn.init.xavier_uniform_(w)
        return nn.Parameter(w)

    class ManTraNetTorch(nn.Module):
        def __init__(self):
            super().__init__()
            k = cfg.first_kernel
            self.regular = glorot(cfg.regular_filters, 3, k, k) if cfg.regular_filters else None
            self.register_buffer("srm", torch.from_numpy(layers.srm_kernels().transpose(3, 2, 0, 1).copy())
                                 if cfg.srm else torch.zeros(0, 3, k, k))
            self.bayar = nn.Parameter(torch.rand(cfg.bayar_filters, 3, k, k)) if cfg.bayar_filters else None
            self.layer_names = featex.layer_names(cfg)
            self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3) for _, c_in, c_out in self.layer_names)
            for conv in self.convs:
                nn.init.xavier_uniform_(conv.weight)
                nn.init.zeros_(conv.bias)
            if cfg.head == "imc":
                self.imc_kernel = glorot(cfg.num_classes, cfg.feature_dim, 3, 3)
                self.imc_bias = nn.Parameter(torch.zeros(cfg.num_classes))
            else:
                f, kl, a = cfg.lstm_filters, cfg.lstm_kernel, cfg.adapt_dim
                self.outlier = glorot(a, cfg.feature_dim, 1, 1)
                self.min_std = nn.Parameter(torch.full((a,), 1e-5))
                self.register_buffer("moving_mean", torch.zeros(a))
                self.register_buffer("moving_variance", torch.ones(a))
                self.lstm_in = nn.Conv2d(a, 4 * f, kl, padding=kl // 2)
                self.lstm_rec = nn.Conv2d(f, 4 * f, kl, padding=kl // 2, bias=False)
                self.pred = nn.Conv2d(f, 1, cfg.pred_kernel, padding=cfg.pred_kernel // 2)
                with torch.no_grad():
                    self.lstm_in.bias.zero_()
                    self.lstm_in.bias[f:2 * f] = 1.0  # unit forget bias
            self.project()

        @torch.no_grad()
        def project(self):
            """The constraints after each update, as model.project."""
            if self.bayar is not None:
                c = self.bayar.shape[-1] // 2
                off = self.bayar.clone()
                off[:, :, c, c] = 0
                off = off / (off.sum(dim=(2, 3), keepdim=True) + 1e-7)
                off[:, :, c, c] = -1
                self.bayar.copy_(off)
            if cfg.head != "imc":
                w = self.outlier
                w.copy_(w / (1e-7 + w.square().sum(dim=(1, 2, 3), keepdim=True).sqrt()))
                self.min_std.clamp_(min=0.0)

        def featex(self, x):
            parts = [p for p in (self.regular, self.srm, self.bayar) if p is not None and p.shape[0]]
            x = F.relu(F.conv2d(symmetric_pad(x, cfg.first_kernel // 2), torch.cat(parts, dim=0)))
            for (name, c_in, c_out), conv in zip(self.layer_names, self.convs):
                y = conv(symmetric_pad(x, 1))
                if name == "transform":
                    x = torch.tanh(y) if cfg.transform_activation == "tanh" else y
                else:
                    y = F.relu(y)
                    x = x + y if (cfg.residual and c_in == c_out) else y
            sq = x.float().square().sum(dim=1, keepdim=True)
            return x * torch.rsqrt(sq.clamp(min=1e-12)).to(x.dtype)

        def forward(self, x, train: bool = False):
            """[-1, 1] NCHW -> logits: (N, classes) pooled for the IMC head, (N, H, W) otherwise."""
            feat = self.featex(x)
            device_type = x.device.type
            if cfg.head == "imc":
                with torch.autocast(device_type, enabled=False):  # float32, as in JAX
                    padded = symmetric_pad(feat.float(), 1)
                    h, w = feat.shape[2:]
                    logits = self.imc_bias
                    for dy in range(3):
                        for dx in range(3):
                            shifted_mean = padded[:, :, dy:dy + h, dx:dx + w].mean(dim=(2, 3))
                            logits = logits + shifted_mean @ self.imc_kernel[:, :, dy, dx].t()
                    return logits
            y = F.conv2d(feat, self.outlier)
            with torch.autocast(device_type, enabled=False):  # the LADN statistics are float32 in JAX
                y = y.float()
                if train:
                    mean = y.mean(dim=(0, 2, 3))
                    var = (y - mean[:, None, None]).square().mean(dim=(0, 2, 3))
                    with torch.no_grad():
                        m = cfg.bn_momentum
                        self.moving_mean.mul_(m).add_((1 - m) * mean)
                        self.moving_variance.mul_(m).add_((1 - m) * var)
                else:
                    mean, var = self.moving_mean, self.moving_variance
                y = (y - mean[:, None, None]) * torch.rsqrt(var[:, None, None] + cfg.bn_epsilon)
                g_mean = y.mean(dim=(2, 3), keepdim=True)
                g_std = (y - g_mean).square().mean(dim=(2, 3), keepdim=True).sqrt()
                sigma = torch.maximum(g_std, 1e-6 + self.min_std[None, :, None, None])
                devs = [box_mean(y, k) - y for k in cfg.windows] + [g_mean - y]
                z = (torch.stack(devs, dim=1) / sigma[:, None]).abs()  # (N, T, C, H, W)
            # As in JAX: the ConvLSTM and prediction convolutions in the computation dtype (autocast's
            # in the bfloat16 rows), the gates and states in float32.
            n, t, c, h, w = z.shape
            f = cfg.lstm_filters
            xz = self.lstm_in(z.reshape(n * t, c, h, w)).float().reshape(n, t, 4 * f, h, w)
            hidden = cell = torch.zeros_like(xz[:, 0, :f])
            for step in range(t):
                gates = xz[:, step] + self.lstm_rec(hidden).float()
                z_i, z_f, z_c, z_o = gates.chunk(4, dim=1)
                cell = hard_sigmoid(z_f) * cell + hard_sigmoid(z_i) * torch.tanh(z_c)
                hidden = hard_sigmoid(z_o) * torch.tanh(cell)
            return self.pred(hidden)[:, 0].float()

    return ManTraNetTorch()


def torch_counts(net) -> tuple[int, int]:
    """(total, trainable) as model.count_params: parameters plus the batch-norm statistics."""
    trainable = sum(p.numel() for p in net.parameters())
    stats = sum(b.numel() for name, b in net.named_buffers() if name.startswith("moving_"))
    return trainable + stats, trainable


def load_jax_variables(net, variables, cfg):
    """Copies JAX variables (HWIO kernels) into the PyTorch peer (OIHW), for the equivalence check."""
    import numpy as np
    import torch

    def oihw(a):
        return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32).transpose(3, 2, 0, 1)))

    def vec(a):
        return torch.from_numpy(np.asarray(a, np.float32).copy())

    p = variables["params"]
    with torch.no_grad():
        if net.regular is not None:
            net.regular.copy_(oihw(p["Featex"]["b1c1"]["regular_kernel"]))
        if net.bayar is not None:
            net.bayar.copy_(oihw(p["Featex"]["b1c1"]["bayar_kernel"]))
        for (name, _, _), conv in zip(net.layer_names, net.convs):
            conv.weight.copy_(oihw(p["Featex"][name]["kernel"]))
            conv.bias.copy_(vec(p["Featex"][name]["bias"]))
        if cfg.head == "imc":
            net.imc_kernel.copy_(oihw(p["imc"]["kernel"]))
            net.imc_bias.copy_(vec(p["imc"]["bias"]))
            return
        net.outlier.copy_(oihw(p["outlierTrans"]["kernel"]))
        net.min_std.copy_(vec(p["glbStd"]["min_std"]))
        net.lstm_in.weight.copy_(oihw(p["cLSTM"]["kernel"]))
        net.lstm_in.bias.copy_(vec(p["cLSTM"]["bias"]))
        net.lstm_rec.weight.copy_(oihw(p["cLSTM"]["recurrent_kernel"]))
        net.pred.weight.copy_(oihw(p["pred"]["kernel"]))
        net.pred.bias.copy_(vec(p["pred"]["bias"]))
        net.moving_mean.copy_(vec(variables["batch_stats"]["bnorm"]["moving_mean"]))
        net.moving_variance.copy_(vec(variables["batch_stats"]["bnorm"]["moving_variance"]))


def check_torch_peer() -> dict:
    """On the CPU: parameter counts against ours for the released configurations, and the outputs
    of a small configuration with our parameters copied in, against JAX's (float32)."""
    import jax
    import numpy as np
    import torch

    from mantra_jax.imc import taxonomy
    from mantra_jax.nn import config, model

    out = {"counts": {}, "max_abs_diff": {}, "max_abs_logit": {}}
    leaf_classes = taxonomy.num_classes(taxonomy.LEAF_LEVEL)
    for name, cfg in (("released", config.released()),
                      ("imc", config.make_config(head="imc", num_classes=leaf_classes))):
        shapes = jax.eval_shape(lambda cfg=cfg: model.init(jax.random.key(0), cfg))
        out["counts"][name] = {"jax": list(model.count_params(shapes)), "torch": list(torch_counts(torch_network(cfg)))}
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 40, 56, 3)).astype(np.float32)
    for name, cfg in (("ladn", config.make_config(width_scale=CHECK_WIDTH_SCALE)),
                      ("imc", config.make_config(head="imc", num_classes=leaf_classes, width_scale=CHECK_WIDTH_SCALE))):
        variables = harness.benchmark_variables(cfg, seed=1)
        if cfg.head != "imc":  # non-trivial batch-norm statistics, so that inference mode is checked too
            variables["batch_stats"] = {"bnorm": {"moving_mean": rng.normal(0, 0.1, cfg.adapt_dim).astype(np.float32),
                                                  "moving_variance": rng.uniform(0.5, 2, cfg.adapt_dim).astype(np.float32)}}
        net = torch_network(cfg)
        load_jax_variables(net, variables, cfg)
        x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        apply = jax.jit(model.apply, static_argnames=("cfg", "train", "pooled"))
        for train in (False, True):
            expected = apply(variables, x, cfg=cfg, train=train, pooled=cfg.head == "imc")["logits"]
            with torch.no_grad():
                got = net(x_torch, train=train).numpy()
            key = f"{name}_{'train' if train else 'inference'}"
            out["max_abs_diff"][key] = float(np.max(np.abs(got - np.asarray(expected))))
            out["max_abs_logit"][key] = float(np.max(np.abs(np.asarray(expected))))
    counts_ok = all(v["jax"] == v["torch"] for v in out["counts"].values())
    out["ok"] = bool(counts_ok and max(out["max_abs_diff"].values()) < 1e-3)
    return out


def measure_torch_rows(rows, repeats: int, grad_clip_norm: float) -> dict:
    """The PyTorch peer's rows, (accelerator.RowSpec, ModelConfig, dtype name) each, in order, in
    this one process (peak memory is reset between rows): forward, backward, gradient clipping to
    `grad_clip_norm` and Adam for train rows, forward for inference, under torch.autocast(bfloat16)
    for bfloat16 rows, channels_last. Each finished row is also printed as a PARTIAL line, so that
    a process stopped by its timeout keeps the rows it measured."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    else:
        # Without this, some random initialisations make PyTorch's CPU kernels meet denormals and
        # run 20-60x slower (seen with the --quick network); the JAX rows show no such effect.
        torch.set_flush_denormal(True)
    out = {"version": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
           "threads": torch.get_num_threads(), "rows": []}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def run_row(spec, cfg, dtype_name: str) -> dict:
        """Everything one row allocates is local here, so it is freed before the next row."""
        torch.manual_seed(0)
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype_name == "bfloat16")
        rng = np.random.default_rng(0)
        net = torch_network(cfg).to(device=device, memory_format=torch.channels_last)
        images = torch.from_numpy(rng.integers(0, 256, (spec.batch, spec.height, spec.width, 3), dtype=np.uint8))
        if spec.kind in ("imc", "e2e"):
            images = images.to(device)
            if spec.kind == "imc":
                target = torch.from_numpy(rng.integers(0, cfg.num_classes, spec.batch)).to(device)
            else:
                target = torch.from_numpy((rng.random((spec.batch, spec.height, spec.width)) < 0.3)
                                          .astype(np.float32)).to(device)
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, **({"fused": True} if cuda else {}))

            def call():
                optimizer.zero_grad(set_to_none=True)
                x = (images.permute(0, 3, 1, 2).float() * (2 / 255) - 1).contiguous(memory_format=torch.channels_last)
                with autocast():
                    logits = net(x, train=True)
                if spec.kind == "imc":
                    loss = F.cross_entropy(logits.float(), target)
                else:
                    loss = F.binary_cross_entropy_with_logits(logits.float(), target)
                loss.backward()
                if grad_clip_norm:  # as the trainer's optimiser (loop.training_optimizer)
                    torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip_norm)
                optimizer.step()
                net.project()
                sync()
        else:
            net.eval()
            rgb = images[0].numpy()

            def call():
                with torch.inference_mode(), autocast():
                    x = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float() * (2 / 255) - 1
                    prob = torch.sigmoid(net(x.contiguous(memory_format=torch.channels_last)).float())[0]
                    prob.cpu().numpy()  # host to host, as Predictor.predict

        times = harness.time_calls(call, spec.repeats or repeats, warmup=spec.warmup)
        result = {"times_s": times, "median_s": harness.median(times)}
        if cuda:
            result["peak_bytes"] = int(torch.cuda.max_memory_allocated())
        return result

    for spec, cfg, dtype_name in rows:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result = {"row": spec.name, "dtype": dtype_name}
        try:
            result.update(run_row(spec, cfg, dtype_name))
        except torch.cuda.OutOfMemoryError as error:
            result.update(error="OOM", detail=str(error).splitlines()[0])
        except RuntimeError as error:  # CPU allocation failures and the like
            text = str(error)
            result.update(error="OOM" if "memory" in text.lower() else "error",
                          detail=text.splitlines()[0] if text else type(error).__name__)
        out["rows"].append(result)
        harness.emit(result, "PARTIAL")
        print(f"torch {spec.name} {dtype_name}: "
              + (f"{1e3 * result['median_s']:.2f} ms" if "median_s" in result else result["error"]),
              file=sys.stderr, flush=True)
    return out


