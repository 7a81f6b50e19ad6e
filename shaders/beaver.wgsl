// Fused elementwise Beaver combination, one element per invocation:
//   arithmetic (kind 0): z = c + e*b + a*f (+ e*f)
//   boolean    (kind 1): z = c ^ (e&b) ^ (a&f) (^ (e&f))

struct Params {
    len: u32,
    kind: u32,
    with_ef: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> tc: array<R>;
@group(0) @binding(2) var<storage, read> te: array<R>;
@group(0) @binding(3) var<storage, read> tf: array<R>;
@group(0) @binding(4) var<storage, read> ta: array<R>;
@group(0) @binding(5) var<storage, read> tb: array<R>;
@group(0) @binding(6) var<storage, read_write> out: array<R>;

@compute @workgroup_size(256)
fn beaver(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let c = tc[i];
    let e = te[i];
    let f = tf[i];
    let a = ta[i];
    let b = tb[i];
    var z: R;
    if (p.kind == 0u) {
        z = r_mac(r_mac(c, e, b), a, f);
        if (p.with_ef != 0u) {
            z = r_mac(z, e, f);
        }
    } else {
        z = r_xor(r_xor(c, r_and(e, b)), r_and(a, f));
        if (p.with_ef != 0u) {
            z = r_xor(z, r_and(e, f));
        }
    }
    out[i] = z;
}
