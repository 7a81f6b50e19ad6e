//! In-process transport: one mpsc channel per ordered pair of endpoints.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::{Meter, PartyId, Transport};
use crate::error::{EngineError, Result};

/// An endpoint of an in-process channel mesh.
pub struct ChannelTransport {
    me: PartyId,
    senders: HashMap<PartyId, Sender<Vec<u64>>>,
    receivers: HashMap<PartyId, Receiver<Vec<u64>>>,
    timeout: Duration,
    meter: Meter,
}

/// Connect every endpoint in `ids` to every other; receives time out after `timeout`.
pub fn channel_mesh(ids: &[PartyId], timeout: Duration) -> HashMap<PartyId, ChannelTransport> {
    let mut senders: HashMap<PartyId, HashMap<PartyId, Sender<Vec<u64>>>> = HashMap::new();
    let mut receivers: HashMap<PartyId, HashMap<PartyId, Receiver<Vec<u64>>>> = HashMap::new();
    for &from in ids {
        for &to in ids {
            if from != to {
                let (tx, rx) = channel();
                senders.entry(from).or_default().insert(to, tx);
                receivers.entry(to).or_default().insert(from, rx);
            }
        }
    }
    ids.iter()
        .map(|&id| {
            (
                id,
                ChannelTransport {
                    me: id,
                    senders: senders.remove(&id).unwrap_or_default(),
                    receivers: receivers.remove(&id).unwrap_or_default(),
                    timeout,
                    meter: Meter::default(),
                },
            )
        })
        .collect()
}

impl Transport for ChannelTransport {
    fn me(&self) -> PartyId {
        self.me
    }

    fn send(&mut self, to: PartyId, payload: Vec<u64>) -> Result<()> {
        let bytes = 8 * payload.len() as u64;
        let tx = self
            .senders
            .get(&to)
            .ok_or_else(|| EngineError::Invalid(format!("{} has no link to {to}", self.me)))?;
        tx.send(payload).map_err(|_| EngineError::Disconnected {
            me: self.me,
            peer: to,
        })?;
        self.meter.on_send(bytes);
        Ok(())
    }

    fn recv(&mut self, from: PartyId) -> Result<Vec<u64>> {
        let rx = self
            .receivers
            .get(&from)
            .ok_or_else(|| EngineError::Invalid(format!("{} has no link from {from}", self.me)))?;
        let msg = rx.recv_timeout(self.timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => EngineError::Timeout {
                me: self.me,
                peer: from,
                after: self.timeout,
            },
            RecvTimeoutError::Disconnected => EngineError::Disconnected {
                me: self.me,
                peer: from,
            },
        })?;
        self.meter.on_recv(8 * msg.len() as u64);
        Ok(msg)
    }

    fn meter(&mut self) -> &mut Meter {
        &mut self.meter
    }

    fn meter_ref(&self) -> &Meter {
        &self.meter
    }
}
