// Matrix product C (+)= A[m, k] · B[k, n] mod 2^64, row-major.
//
// The host splits large operands into chunks that each fit one storage binding: a dispatch sees
// rows [0, m) of an A chunk (row stride `lda`), rows [0, k) of a B chunk and rows [0, m) of C,
// at element offsets a_off / b_off / c_off inside the bound ranges (bindings start 256-byte
// aligned, so a chunk's first element may sit a little past the binding start).
// Columns of B and C may be split too (n <= ldn), so rows longer than one binding work.
// With `accumulate` != 0 the product is added to what C holds (an accumulator copied in before,
// or the partial sum of an earlier k-chunk); otherwise C is overwritten.

struct Params {
    m: u32,
    // Columns of the B and C chunk (at most ldn).
    n: u32,
    k: u32,
    lda: u32,
    // Element offsets of the chunk starts inside the A, B and C bindings (each < 256):
    // a_off | b_off << 8 | c_off << 16.
    offsets: u32,
    accumulate: u32,
    // Row stride of B and C (a chunk may hold only some of their columns).
    ldn: u32,
    // Skinny kernel split along k: workgroup z computes depth [z k_seg, (z + 1) k_seg) into
    // its own partial C at element z * seg_stride (summed by `sum_segments`).
    k_seg: u32,
    seg_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<R>;
@group(0) @binding(2) var<storage, read> b: array<R>;
@group(0) @binding(3) var<storage, read_write> c: array<R>;

// Tiled kernel: a 16x16 workgroup computes a 64x64 block of C; each invocation owns a 4x4
// register block (rows ty + 16i, columns tx + 16j, so neighbouring invocations touch
// neighbouring columns). A and B tiles of depth TK are staged in workgroup memory:
// 2 x 64 x 16 x 8 bytes = 16 KiB, the WebGPU default limit.
const TILE: u32 = 64u;
const TK: u32 = 16u;

fn a_off() -> u32 {
    return p.offsets & 0xffu;
}

fn b_off() -> u32 {
    return (p.offsets >> 8u) & 0xffu;
}

fn c_off() -> u32 {
    return p.offsets >> 16u;
}

var<workgroup> a_tile: array<R, 1024>; // [TK][TILE]
var<workgroup> b_tile: array<R, 1024>; // [TK][TILE]

fn store_c(row: u32, col: u32, v: R) {
    store_c_at(0u, row, col, v);
}

fn store_c_at(base: u32, row: u32, col: u32, v: R) {
    if (row < p.m && col < p.n) {
        let idx = base + c_off() + row * p.ldn + col;
        var z = v;
        if (p.accumulate != 0u) {
            z = r_add(c[idx], v);
        }
        c[idx] = z;
    }
}

@compute @workgroup_size(16, 16)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let tx = lid.x;
    let ty = lid.y;
    let t = ty * 16u + tx;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;

    var acc: array<R, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = r_zero();
    }

    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        // Stage the tiles: 1024 elements each, 4 per invocation, zero-filled past the edges.
        for (var l = 0u; l < 4u; l++) {
            let idx = t + 256u * l;
            let ar = idx >> 4u;
            let ak = idx & 15u;
            var av = r_zero();
            if (row0 + ar < p.m && k0 + ak < p.k) {
                av = a[a_off() + (row0 + ar) * p.lda + k0 + ak];
            }
            a_tile[ak * TILE + ar] = av;

            let bk = idx >> 6u;
            let bc = idx & 63u;
            var bv = r_zero();
            if (k0 + bk < p.k && col0 + bc < p.n) {
                bv = b[b_off() + (k0 + bk) * p.ldn + col0 + bc];
            }
            b_tile[bk * TILE + bc] = bv;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TK; kk++) {
            let a0 = a_tile[kk * TILE + ty];
            let a1 = a_tile[kk * TILE + ty + 16u];
            let a2 = a_tile[kk * TILE + ty + 32u];
            let a3 = a_tile[kk * TILE + ty + 48u];
            let b0 = b_tile[kk * TILE + tx];
            let b1 = b_tile[kk * TILE + tx + 16u];
            let b2 = b_tile[kk * TILE + tx + 32u];
            let b3 = b_tile[kk * TILE + tx + 48u];
            acc[0] = r_mac(acc[0], a0, b0);
            acc[1] = r_mac(acc[1], a0, b1);
            acc[2] = r_mac(acc[2], a0, b2);
            acc[3] = r_mac(acc[3], a0, b3);
            acc[4] = r_mac(acc[4], a1, b0);
            acc[5] = r_mac(acc[5], a1, b1);
            acc[6] = r_mac(acc[6], a1, b2);
            acc[7] = r_mac(acc[7], a1, b3);
            acc[8] = r_mac(acc[8], a2, b0);
            acc[9] = r_mac(acc[9], a2, b1);
            acc[10] = r_mac(acc[10], a2, b2);
            acc[11] = r_mac(acc[11], a2, b3);
            acc[12] = r_mac(acc[12], a3, b0);
            acc[13] = r_mac(acc[13], a3, b1);
            acc[14] = r_mac(acc[14], a3, b2);
            acc[15] = r_mac(acc[15], a3, b3);
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store_c(row0 + ty + 16u * i, col0 + tx + 16u * j, acc[i * 4u + j]);
        }
    }
}

// Skinny kernel for few rows (m <= 16): one invocation per column of C and 4 rows per
// workgroup row; B is streamed once per 4 rows with coalesced loads, A values are uniform
// across the workgroup. Avoids a 64-row tile doing 64x the work for a matrix-vector product.
// Small (64-wide) workgroups so that even a few thousand columns spread over many cores.
@compute @workgroup_size(64)
fn matmul_skinny(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let col = wid.x * 64u + lid;
    let row0 = wid.y * 4u;
    if (col >= p.n || row0 >= p.m) {
        return;
    }
    let k0 = wid.z * p.k_seg;
    let k1 = min(p.k, k0 + p.k_seg);
    let base = wid.z * p.seg_stride;
    // Rows past m repeat the last row (computed, never stored), keeping loads in bounds.
    let last = p.m - 1u;
    let ra0 = a_off() + min(row0, last) * p.lda;
    let ra1 = a_off() + min(row0 + 1u, last) * p.lda;
    let ra2 = a_off() + min(row0 + 2u, last) * p.lda;
    let ra3 = a_off() + min(row0 + 3u, last) * p.lda;
    var acc0 = r_zero();
    var acc1 = r_zero();
    var acc2 = r_zero();
    var acc3 = r_zero();
    for (var kk = k0; kk < k1; kk++) {
        let bv = b[b_off() + kk * p.ldn + col];
        acc0 = r_mac(acc0, a[ra0 + kk], bv);
        acc1 = r_mac(acc1, a[ra1 + kk], bv);
        acc2 = r_mac(acc2, a[ra2 + kk], bv);
        acc3 = r_mac(acc3, a[ra3 + kk], bv);
    }
    store_c_at(base, row0, col, acc0);
    store_c_at(base, row0 + 1u, col, acc1);
    store_c_at(base, row0 + 2u, col, acc2);
    store_c_at(base, row0 + 3u, col, acc3);
}

// Sum of the k-segment partials of a split skinny product: c[i] (+)= sum over z < k of
// a[z * m + i], for i < m (here m counts all m x n outputs, k the segments).
@compute @workgroup_size(64)
fn sum_segments(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index_of(wid, nwg, lid, 64u);
    if (i >= p.m) {
        return;
    }
    var z = r_zero();
    if (p.accumulate != 0u) {
        z = c[i];
    }
    for (var s = 0u; s < p.k; s++) {
        z = r_add(z, a[s * p.m + i]);
    }
    c[i] = z;
}
