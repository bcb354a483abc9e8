"""Network configuration: one frozen dataclass, plus the named variants of the paper and release.

Every ablation of the paper (Tables 2, 3, 5, 6) and every released model (Ptrain0-4) is a value of
`ModelConfig`; the network code reads only these fields.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

# Conv widths after the first layer, one tuple per block; layer names follow the release:
# block 1 holds b1c1 (the first layer) and then b1c2, block i>1 holds b{i}c1, b{i}c2, ...
RELEASED_WIDTHS = ((32,), (64, 64), (128, 128, 128), (256, 256, 256), (256, 256))

# Table 5 (width and depth). The paper gives no exact widths for its variants; the released model is
# the "wider and deeper" one, and the others halve its widths and/or drop one conv in blocks 3-5.
BACKBONE_WIDTHS = {
    "wider_deeper": RELEASED_WIDTHS,
    "wider": ((32,), (64, 64), (128, 128), (256, 256), (256,)),
    "deeper": ((16,), (32, 32), (64, 64, 64), (128, 128, 128), (128, 128)),
    "baseline": ((16,), (32, 32), (64, 64), (128, 128), (128,)),
    # Table 2 backbones. "vgg" is the released plain stack; "resnet" adds identity shortcuts over
    # every equal-width conv; "dncnn" is a constant-width 64-channel stack of 17 convs (without the
    # batch norm of the original DnCNN, which would make IMC features batch dependent).
    "vgg": RELEASED_WIDTHS,
    "resnet": RELEASED_WIDTHS,
    "dncnn": ((64,),) + ((64, 64, 64, 64),) * 4,
}
BACKBONES = ("released",) + tuple(BACKBONE_WIDTHS)

# Table 3 (first layer): name -> (kernel size, regular filters, SRM on/off, Bayar filters).
# Plain layers keep the released width of 16; "srm" is the 9 fixed SRM filters alone.
FIRST_LAYERS = {
    "combined": (5, None, True, 3),  # None: regular_filters from the config (released: 4)
    "plain5": (5, 16, False, 0),
    "plain3": (3, 16, False, 0),
    "bayar": (5, 0, False, 16),
    "srm": (5, 0, True, 0),
}
ANOMALY_FEATURES = ("tac", "fac", "df", "zf")
# Computation dtypes of the convolutions (`--precision` of every command); parameters, the Featex
# normalisation and the anomaly statistics stay float32 whichever is chosen.
PRECISIONS = ("float32", "bfloat16")


def dtype(precision: str):
    """The jnp scalar type of a precision name of PRECISIONS (jnp.float32, jnp.bfloat16)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    import jax.numpy as jnp  # noqa: PLC0415  (this module stays free of JAX)

    return getattr(jnp, precision)


LSTM_GATES = ("hard_sigmoid", "sigmoid")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # Feature extractor ("Featex").
    widths: tuple = RELEASED_WIDTHS
    residual: bool = False  # identity shortcuts over equal-width convs (Table 2 "resnet")
    first_kernel: int = 5
    regular_filters: int = 4
    srm: bool = True
    bayar_filters: int = 3
    feature_dim: int = 256  # width of `transform`
    transform_activation: Optional[str] = None  # None or "tanh" (Ptrain0)
    # Head: "ladn" (ManTra-Net) or "imc" (3x3 conv decision head to `num_classes`).
    head: str = "ladn"
    num_classes: int = 380
    # Local anomaly detection network.
    adapt_dim: int = 64
    windows: tuple = (7, 15, 31)
    use_global: bool = True
    anomaly: str = "tac"  # tac: ConvLSTM over windows; fac: windows stacked on features;
    #                       df: raw deviations (no Z-score) through the ConvLSTM; zf: global Z only
    lstm_filters: int = 8
    lstm_kernel: int = 7
    # The ConvLSTM's i, f, o gates: "hard_sigmoid" (Keras 2's, the released model's) or "sigmoid".
    # A hard sigmoid has no gradient beyond +-2.5: a ConvLSTM whose gates all saturate there stops
    # learning for good (RESULTS.md, the anomaly network on fixed features).
    lstm_gate: str = "hard_sigmoid"
    pred_kernel: int = 7
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3

    def __post_init__(self):
        sizes = {"widths": [w for block in self.widths for w in block], "feature_dim": [self.feature_dim],
                 "num_classes": [self.num_classes], "adapt_dim": [self.adapt_dim],
                 "lstm_filters": [self.lstm_filters], "lstm_kernel": [self.lstm_kernel],
                 "pred_kernel": [self.pred_kernel]}
        for name, values in sizes.items():
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name} must be positive whole numbers, got {getattr(self, name)!r}")
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0
               for v in (self.regular_filters, self.bayar_filters)):
            raise ValueError(f"regular_filters and bayar_filters must be whole numbers >= 0, got "
                             f"{self.regular_filters!r} and {self.bayar_filters!r}")
        if not (0 <= self.bn_momentum < 1 and self.bn_epsilon > 0):
            raise ValueError(f"bn_momentum must be in [0, 1) and bn_epsilon > 0, got {self.bn_momentum!r} "
                             f"and {self.bn_epsilon!r}")
        if self.head not in ("ladn", "imc"):
            raise ValueError(f"head must be 'ladn' or 'imc', got {self.head!r}")
        if self.anomaly not in ANOMALY_FEATURES:
            raise ValueError(f"anomaly must be one of {ANOMALY_FEATURES}, got {self.anomaly!r}")
        if self.first_width <= 0:
            raise ValueError("the first layer has no filters")
        if self.transform_activation not in (None, "tanh"):
            raise ValueError(f"transform_activation must be None or 'tanh', got {self.transform_activation!r}")
        if self.first_kernel not in (3, 5):
            raise ValueError(f"first_kernel must be 3 or 5, got {self.first_kernel}")
        if any(w % 2 == 0 or w < 1 for w in self.windows):
            raise ValueError(f"windows must be odd positive sizes, got {self.windows}")
        if self.lstm_gate not in LSTM_GATES:
            raise ValueError(f"lstm_gate must be one of {LSTM_GATES}, got {self.lstm_gate!r}")
        if self.anomaly == "zf" and not self.use_global:
            raise ValueError("anomaly 'zf' needs the global window")

    @property
    def first_width(self) -> int:
        return self.regular_filters + (9 if self.srm else 0) + self.bayar_filters

    @property
    def time_steps(self) -> int:
        if self.anomaly == "zf":
            return 1
        return len(self.windows) + int(self.use_global)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


def released(variant: str = "Ptrain4") -> ModelConfig:
    """The configurations the authors released (ManTraNet_Ptrain{0..4}.h5)."""
    if variant in ("Ptrain4", "Ptrain3", "Ptrain2"):
        return ModelConfig(windows=(7, 15, 31) if variant == "Ptrain4" else (7, 15, 31, 63))
    if variant in ("Ptrain0", "Ptrain1"):
        return ModelConfig(
            regular_filters=20,
            windows=(7, 15, 31, 63),
            transform_activation="tanh" if variant == "Ptrain0" else None,
        )
    raise ValueError(f"unknown released variant {variant!r}; expected Ptrain0..Ptrain4")


def make_config(
    *,
    backbone: str = "released",
    first_layer: str = "combined",
    regular_filters: int = 4,
    head: str = "ladn",
    num_classes: int = 380,
    anomaly: str = "tac",
    windows=(7, 15, 31),
    width_scale: float = 1.0,
    **overrides,
) -> ModelConfig:
    """Builds a config from the names the experiments' flags use.

    `width_scale` shrinks every width (for smoke runs and tests); 1.0 is the full network.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")
    if first_layer not in FIRST_LAYERS:
        raise ValueError(f"unknown first layer {first_layer!r}; expected one of {tuple(FIRST_LAYERS)}")
    widths = BACKBONE_WIDTHS.get(backbone, RELEASED_WIDTHS)
    kernel, regular, srm, bayar = FIRST_LAYERS[first_layer]
    regular = regular_filters if regular is None else regular

    def scale(w):
        return max(1, int(round(w * width_scale)))

    widths = tuple(tuple(scale(w) for w in block) for block in widths)
    fields = dict(
        widths=widths,
        residual=backbone == "resnet",
        first_kernel=kernel,
        regular_filters=regular if width_scale == 1.0 or regular == 0 else scale(regular),
        srm=srm,
        bayar_filters=bayar if width_scale == 1.0 or bayar == 0 else max(1, scale(bayar)),
        feature_dim=scale(256),
        head=head,
        num_classes=num_classes,
        adapt_dim=scale(64),
        anomaly=anomaly,
        windows=tuple(int(w) for w in windows),
        lstm_filters=max(2, scale(8)),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def to_dict(cfg: ModelConfig) -> dict:
    """JSON-friendly form (stored beside checkpoints)."""
    d = dataclasses.asdict(cfg)
    d["widths"] = [list(b) for b in cfg.widths]
    d["windows"] = list(cfg.windows)
    return d


def from_dict(d: dict) -> ModelConfig:
    d = dict(d)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown model config fields {sorted(unknown)}")
    if "widths" in d:
        d["widths"] = tuple(tuple(int(w) for w in b) for b in d["widths"])
    if "windows" in d:
        d["windows"] = tuple(int(w) for w in d["windows"])
    return ModelConfig(**d)


def featex_config_fields(cfg: ModelConfig) -> dict:
    """The fields of a configuration that define its Featex: two configurations with equal fields
    can exchange Featex parameters (Table 7's initialisations, a trace sharing the mask's Featex)."""
    names = ("widths", "residual", "first_kernel", "regular_filters", "srm", "bayar_filters",
             "feature_dim", "transform_activation")
    return {n: getattr(cfg, n) for n in names}
