//! Getting secrets in (from an owner) and out (to a named recipient).

use crate::dealer::fill_from_seed;
use crate::error::{shape_err, EngineError, Result};
use crate::party::Party;
use crate::protocols::matmul::block_rows;
use crate::share::Share;
use crate::transport::PartyId;
use crate::wire::tensor::{pack, unpack, unpack_seed};

/// The seed of bob's share in `msg` from `owner`, its shape checked against `shape`.
fn seed_of(msg: &[u64], owner: PartyId, shape: &[usize], what: &'static str) -> Result<[u8; 32]> {
    let (got, seed) = unpack_seed(msg)?;
    if got != shape {
        return Err(shape_err(
            what,
            format!("{owner} sent shape {got:?}, expected {shape:?}"),
        ));
    }
    Ok(seed)
}

impl Party {
    /// Receive this party's share of a tensor from `owner` (who split it and sent alice her
    /// share and bob the seed of his, see [`crate::owner`]). The message carries the shape,
    /// checked against `shape` before anything is allocated or expanded.
    pub fn receive_share(&mut self, owner: PartyId, shape: &[usize]) -> Result<Share> {
        let msg = self.recv_from("share", owner)?;
        if self.index() == 1 {
            let seed = seed_of(&msg, owner, shape, "receive_share")?;
            let mut data = kernels::cpu::zeroed_words(shape.iter().product());
            fill_from_seed(&seed, 0, &mut data);
            return Ok(Share::new(self.backend().upload(shape, &data)?));
        }
        let (got, data) = unpack(&msg)?;
        if got != shape {
            return Err(shape_err(
                "receive_share",
                format!("{owner} sent shape {got:?}, expected {shape:?}"),
            ));
        }
        Ok(Share::new(self.backend().upload(shape, data)?))
    }

    /// Receive this party's share of a `[k, n]` matrix that will only serve as the right
    /// operand of products (a model weight): built straight into the backend's product layout
    /// from the owner's message, so the share is held once.
    pub fn receive_operand_share(&mut self, owner: PartyId, shape: &[usize]) -> Result<Share> {
        let msg = self.recv_from("share", owner)?;
        if self.index() == 1 {
            let seed = seed_of(&msg, owner, shape, "receive_operand_share")?;
            let [k, n] = shape else {
                return Err(shape_err(
                    "receive_operand_share",
                    format!("expected a matrix, not {shape:?}"),
                ));
            };
            let be = self.backend_arc();
            let t = be.right_operand_from_rows(*k, *n, block_rows(*n), &mut |p0, out| {
                fill_from_seed(&seed, p0 * n, out)
            })?;
            return Ok(Share::new(t));
        }
        let (got, data) = unpack(&msg)?;
        let (k, n) = match (got.as_slice(), shape) {
            ([k, n], [k2, n2]) if (k, n) == (k2, n2) => (*k, *n),
            _ => {
                return Err(shape_err(
                    "receive_operand_share",
                    format!("{owner} sent shape {got:?}, expected a matrix {shape:?}"),
                ))
            }
        };
        let be = self.backend_arc();
        let t = be.right_operand_from_rows(k, n, block_rows(n), &mut |p0, out| {
            out.copy_from_slice(&data[p0 * n..p0 * n + out.len()])
        })?;
        Ok(Share::new(t))
    }

    /// Send this party's share to `recipient`, who alone reconstructs the value.
    pub fn reveal_to(&mut self, recipient: PartyId, x: &Share) -> Result<()> {
        if matches!(recipient, PartyId::Alice | PartyId::Bob | PartyId::Dealer) {
            return Err(EngineError::Invalid(format!(
                "reveal recipient must be a data owner, not {recipient}"
            )));
        }
        let msg = pack(x.shape(), &self.backend().download(x.tensor())?);
        self.send_to("reveal", recipient, msg)
    }
}
