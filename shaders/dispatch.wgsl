// Dispatch prelude, compiled after the ring prelude and before every kernel file.
//
// Binding layout shared by every kernel: group 0 only; binding 0 is the kernel's uniform
// `Params` (named `p`), bindings 1.. its storage buffers, inputs first and the written buffer
// last, in the order `pipelines.rs` and the host code bind them.
//
// One-dimensional kernels run on a two-dimensional grid of workgroups (a grid axis holds at
// most 65535 workgroups), so an invocation's element index is its workgroup's row-major
// position in the grid times the workgroup size, plus its index inside the workgroup.

// Element index of an invocation of a `@workgroup_size(size)` kernel.
fn flat_index_of(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, size: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * size + lid;
}

// Element index of an invocation of a `@workgroup_size(256)` kernel (most kernels).
fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_index_of(wid, nwg, lid, 256u);
}
