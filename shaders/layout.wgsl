// Layout kernels: `fill` (every element one public value) and `transpose` (16x16 tiles of a
// row-major matrix). The host splits large operands into tiles that fit one storage binding
// each and passes the element offset of the tile inside each binding.

struct Params {
    // fill: len, unused, value lo, value hi.
    // transpose: rows and columns of the output tile, row strides of input and output,
    // element offsets of the tile in the input and output bindings.
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    e: u32,
    f: u32,
    g: u32,
    h: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> fill_out: array<R>;
@group(0) @binding(2) var<storage, read> t_in: array<R>;
@group(0) @binding(3) var<storage, read_write> t_out: array<R>;

@compute @workgroup_size(256)
fn fill(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.a) {
        return;
    }
    fill_out[i] = r_from_words(p.c, p.d);
}

@compute @workgroup_size(16, 16)
fn transpose(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let row = gid.y;
    if (row >= p.a || col >= p.b) {
        return;
    }
    t_out[p.f + row * p.d + col] = t_in[p.e + col * p.c + row];
}
