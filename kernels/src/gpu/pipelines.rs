//! WGSL sources (`shaders/` at the workspace root) and compute pipelines, built once per backend.
//!
//! Each kernel file is compiled after two preludes: the ring prelude, `ring.wgsl` (u32 pairs,
//! portable) or `ring_u64.wgsl` (native u64, needs `SHADER_INT64`), then `dispatch.wgsl` (the
//! binding layout every kernel follows and the flat element index of an invocation). Kernels use
//! the ring prelude's `R` type and `r_*` functions only, so the two variants are the same kernels
//! over different arithmetic.

use crate::error::Result;

use super::context::GpuContext;
use super::U64Variant;

const RING_U32: &str = include_str!("../../../shaders/ring.wgsl");
const RING_U64: &str = include_str!("../../../shaders/ring_u64.wgsl");
const DISPATCH: &str = include_str!("../../../shaders/dispatch.wgsl");
const ELEMENTWISE: &str = include_str!("../../../shaders/elementwise.wgsl");
const BEAVER: &str = include_str!("../../../shaders/beaver.wgsl");
const TRUNCATE: &str = include_str!("../../../shaders/truncate.wgsl");
const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
const REDUCE: &str = include_str!("../../../shaders/reduce.wgsl");
const BITS: &str = include_str!("../../../shaders/bits.wgsl");
const SELECT: &str = include_str!("../../../shaders/select.wgsl");
const LAYOUT: &str = include_str!("../../../shaders/layout.wgsl");
const CHACHA: &str = include_str!("../../../shaders/chacha.wgsl");
const GATHER: &str = include_str!("../../../shaders/gather.wgsl");

/// One entry point: its pipeline and bind group layout (group 0).
pub(crate) struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

/// The two matmul kernels of one variant.
pub(crate) struct MatmulKernels {
    /// 64x64 tiles, 4x4 outputs per invocation.
    pub(crate) tiled: Kernel,
    /// One column per invocation, 4 rows per workgroup row (for m <= `SKINNY_MAX_ROWS`).
    pub(crate) skinny: Kernel,
    /// Sums the k-segment partials of a split skinny product.
    pub(crate) sum_segments: Kernel,
}

/// Every kernel of the chosen variant.
pub(crate) struct Kernels {
    pub(crate) binary: Kernel,
    pub(crate) scalar: Kernel,
    pub(crate) beaver: Kernel,
    pub(crate) truncate: Kernel,
    pub(crate) matmul: MatmulKernels,
    pub(crate) sum_rows_wide: Kernel,
    pub(crate) sum_rows_narrow: Kernel,
    pub(crate) compact_bits: Kernel,
    pub(crate) pack_msb: Kernel,
    pub(crate) bit_select: Kernel,
    pub(crate) payload_select: Kernel,
    pub(crate) fill: Kernel,
    pub(crate) transpose: Kernel,
    pub(crate) chacha12: Kernel,
    pub(crate) gather: Kernel,
}

/// The full WGSL source of a kernel file for a variant: ring prelude, dispatch prelude, body.
fn source(variant: U64Variant, body: &str) -> String {
    let prelude = match variant {
        U64Variant::U32Pairs => RING_U32,
        U64Variant::NativeU64 => RING_U64,
    };
    format!("{prelude}\n{DISPATCH}\n{body}")
}

fn module(ctx: &GpuContext, variant: U64Variant, name: &str, body: &str) -> wgpu::ShaderModule {
    ctx.device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&format!("{name} ({variant:?})")),
            source: wgpu::ShaderSource::Wgsl(source(variant, body).into()),
        })
}

fn kernel(ctx: &GpuContext, module: &wgpu::ShaderModule, entry: &str) -> Kernel {
    let pipeline = ctx
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[],
                // Every kernel writes its workgroup memory before reading it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
    let layout = pipeline.get_bind_group_layout(0);
    Kernel { pipeline, layout }
}

/// Compile the matmul kernels of `variant`.
pub(crate) fn build_matmul(ctx: &GpuContext, variant: U64Variant) -> Result<MatmulKernels> {
    ctx.scoped("compiling matmul kernels", || {
        let m = module(ctx, variant, "matmul", MATMUL);
        Ok(MatmulKernels {
            tiled: kernel(ctx, &m, "matmul_tiled"),
            skinny: kernel(ctx, &m, "matmul_skinny"),
            sum_segments: kernel(ctx, &m, "sum_segments"),
        })
    })
}

/// Compile the remaining kernels of `variant` around its already built matmul kernels.
pub(crate) fn build_all(
    ctx: &GpuContext,
    variant: U64Variant,
    matmul: MatmulKernels,
) -> Result<Kernels> {
    ctx.scoped("compiling kernels", || {
        let ew = module(ctx, variant, "elementwise", ELEMENTWISE);
        let bv = module(ctx, variant, "beaver", BEAVER);
        let tr = module(ctx, variant, "truncate", TRUNCATE);
        let rd = module(ctx, variant, "reduce", REDUCE);
        let bits = module(ctx, variant, "bits", BITS);
        let sel = module(ctx, variant, "select", SELECT);
        let lay = module(ctx, variant, "layout", LAYOUT);
        let cc = module(ctx, variant, "chacha", CHACHA);
        let ga = module(ctx, variant, "gather", GATHER);
        Ok(Kernels {
            binary: kernel(ctx, &ew, "binary"),
            scalar: kernel(ctx, &ew, "scalar"),
            beaver: kernel(ctx, &bv, "beaver"),
            truncate: kernel(ctx, &tr, "truncate"),
            matmul,
            sum_rows_wide: kernel(ctx, &rd, "sum_rows_wide"),
            sum_rows_narrow: kernel(ctx, &rd, "sum_rows_narrow"),
            compact_bits: kernel(ctx, &bits, "compact_bits"),
            pack_msb: kernel(ctx, &bits, "pack_msb"),
            bit_select: kernel(ctx, &sel, "bit_select"),
            payload_select: kernel(ctx, &sel, "payload_select"),
            fill: kernel(ctx, &lay, "fill"),
            transpose: kernel(ctx, &lay, "transpose"),
            chacha12: kernel(ctx, &cc, "chacha12"),
            gather: kernel(ctx, &ga, "gather"),
        })
    })
}
