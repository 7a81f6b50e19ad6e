//! Beaver elementwise multiplication.

use kernels::{BeaverKind, BinaryOp};

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::party::Party;
use crate::share::Share;

impl Party {
    /// `x * y` on ring values without truncation (one round). Use for integer/bit operands.
    pub fn mul_raw(&mut self, x: &Share, y: &Share) -> Result<Share> {
        if x.shape() != y.shape() {
            return Err(shape_err(
                "mul",
                format!("{:?} vs {:?}", x.shape(), y.shape()),
            ));
        }
        let n = x.len();
        let parts = self.material(MaterialSpec::MulTriple { n })?;
        let shape = x.shape().to_vec();
        let be = self.backend();
        let xf = x.tensor().reshaped(vec![n]).expect("n");
        let yf = y.tensor().reshaped(vec![n]).expect("n");
        let e = be.binary(BinaryOp::Sub, &xf, &parts[0])?;
        let f = be.binary(BinaryOp::Sub, &yf, &parts[1])?;
        let opened = self.open("mul", &[&e, &f])?;
        let z = self.backend().beaver_combine(
            BeaverKind::Arithmetic,
            &parts[2],
            &opened[0],
            &opened[1],
            &parts[0],
            &parts[1],
            self.index() == 0,
        )?;
        Ok(Share::new(z.reshaped(shape).expect("n")))
    }

    /// Fixed-point `x * y`: Beaver product then truncation (two rounds, error < 1 ulp).
    pub fn mul(&mut self, x: &Share, y: &Share) -> Result<Share> {
        let p = self.mul_raw(x, y)?;
        self.truncate(&p)
    }
}
