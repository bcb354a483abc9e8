"""The memory-traffic model of benchmarks/xla_traffic.py on a hand-written optimized HLO module
(compiling for a GPU needs JAX's CUDA plugin, which the tests do not install)."""
from benchmarks import xla_traffic

HLO = """HloModule jit_f, is_scheduled=true

%fused_slice (param_0: f32[100,100]) -> f32[10,100] {
  %param_0 = f32[100,100]{1,0} parameter(0)
  ROOT %slice.1 = f32[10,100]{1,0} slice(%param_0), slice={[0:10], [0:100]}
}

%fused_add (param_0.1: f32[100,100], param_1: f32[100,100]) -> f32[100,100] {
  %param_0.1 = f32[100,100]{1,0} parameter(0)
  %param_1 = f32[100,100]{1,0} parameter(1)
  ROOT %add.1 = f32[100,100]{1,0} add(%param_0.1, %param_1)
}

%fused_dynamic_update_slice (param_0.2: f32[100,100], param_1.1: f32[10,100]) -> f32[100,100] {
  %param_0.2 = f32[100,100]{1,0} parameter(0)
  %param_1.1 = f32[10,100]{1,0} parameter(1)
  %c = s32[] constant(0)
  ROOT %dus = f32[100,100]{1,0} dynamic-update-slice(%param_0.2, %param_1.1, %c, %c)
}

ENTRY %main (x: f32[100,100], k: bf16[3,3,8,8]) -> f32[100,100] {
  %x = f32[100,100]{1,0} parameter(0)
  %k = bf16[3,3,8,8]{3,2,1,0} parameter(1)
  %slice_fusion = f32[10,100]{1,0} fusion(%x), kind=kLoop, calls=%fused_slice
  %add_fusion = f32[100,100]{1,0} fusion(%x, /*index=1*/%x), kind=kLoop, calls=%fused_add
  %conv = (bf16[1,8,8,8]{3,2,1,0}, u8[0]{0}) custom-call(%k, %k), custom_call_target="__cudnn$convForward"
  %gte = bf16[1,8,8,8]{3,2,1,0} get-tuple-element(%conv), index=0
  ROOT %dus_fusion = f32[100,100]{1,0} fusion(%add_fusion, %slice_fusion), kind=kLoop, calls=%fused_dynamic_update_slice
}
"""


def test_traffic_model_charges_slices_updates_and_kernels():
    figures = xla_traffic.traffic(HLO)
    by_kind = figures["by_kind"]
    assert by_kind["fusion fused_slice"]["bytes"] == 2 * 4_000  # reads only the 10 x 100 slice, writes it
    assert by_kind["fusion fused_add"]["bytes"] == 3 * 40_000  # two operands read, one result written
    assert by_kind["in-place update"]["bytes"] == 2 * 4_000  # only the update moves
    conv = by_kind["__cudnn$convForward"]
    assert conv["count"] == 1 and conv["bytes"] == 2 * 1_152 + 1_024  # get-tuple-element is free
    assert figures["kernels"] == 4
    assert figures["bytes"] == sum(v["bytes"] for v in by_kind.values())
    assert figures["convolutions_by_dtype"] == {"bf16": 1}
    assert figures["gathers"] == 0 and figures["scatters"] == 0


def test_shape_bytes_sums_tuples():
    assert xla_traffic.shape_bytes("(bf16[2,3]{1,0}, u8[0]{0}, f32[4])") == 12 + 0 + 16
