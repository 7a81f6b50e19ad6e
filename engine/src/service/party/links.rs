//! How a request's three links come together: alice joins bob (bob checks they run the same
//! request), both join the dealer (each gets its seed grant), and the links go back to their
//! pools once the request ended in step on them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Instant;

use crate::deploy::Role;
use crate::error::{EngineError, Result};
use crate::fixed::FixedPoint;
use crate::party::Party;
use crate::transport::{
    step_code, Envelope, Link, PartyId, StreamOptions, StreamTransport, Transport,
};
use crate::wire::control::{
    decode, encode, DealerEnd, DealerJoin, JoinAnswer, JoinKind, PeerJoin, JOIN_STEP,
};
use crate::wire::dealer::{
    text_to_words, words_to_text, SeedGrant, DEALER_STEP, OP_END, STATUS_ERROR, STATUS_OK,
};

use super::{dealer_refused, poisoned, PartyService};
use super::{NameClaim, NameUse, PreparedEntry};

/// Alice's joins that reached bob, and bob's requests waiting for them.
#[derive(Default)]
pub(super) struct Rendezvous {
    pub(super) waiting: HashMap<u64, Sender<(PeerJoin, Link)>>,
    pub(super) parked: HashMap<u64, (PeerJoin, Link, Instant)>,
    pub(super) refused: HashMap<u64, Instant>,
}

/// What a party learns when alice and bob join for a request.
pub(super) struct Joined<'a> {
    /// Per offered batch: whether both parties hold material made ahead for it.
    pub(super) have: Vec<bool>,
    /// Bob: his material made ahead for the batches alice offered.
    pub(super) held: Vec<Option<PreparedEntry>>,
    /// Bob: his claim on the model name (see [`PartyService::join_peer`]).
    pub(super) claim: Option<NameClaim<'a>>,
}

impl PartyService {
    /// Join request `request` with the other party: alice sends bob her join on a link from
    /// her pool, offering per batch the preprocessed material she holds (`offered`); bob waits
    /// for it, checks that alice received the same request and takes his halves of the offered
    /// material. Returns, per batch, the material both hold (bob's halves on bob; on alice only
    /// the flags, as `None`s where bob lacks his half).
    ///
    /// `claim` names the model an upload or delete works on: alice claimed it before her join,
    /// bob claims it (and checks again what is served under it) only once her join arrived, so
    /// alice alone orders requests on one name (two concurrent uploads cannot each take one
    /// party's claim and both fail).
    pub(super) fn join_peer(
        &self,
        request: u64,
        digest: &[u8],
        offered: &[Option<u64>],
        claim: Option<NameUse<'_>>,
        net: &mut StreamTransport,
    ) -> Result<Joined<'_>> {
        net.meter().set_step(JOIN_STEP);
        if self.index == 1 {
            let (join, link) = self.await_peer(request)?;
            net.resume_link(PartyId::Alice, link, 0, 1);
            let mut claimed = None;
            let refused = if join.digest.is_empty() {
                Some("alice refused the request".to_string())
            } else if join.digest != digest {
                Some("alice and bob received different requests".to_string())
            } else {
                match claim.map(|u| self.claim_name(u)).transpose() {
                    Ok(c) => {
                        claimed = c;
                        None
                    }
                    Err(e) => Some(e.to_string()),
                }
            };
            let held: Vec<Option<PreparedEntry>> = match refused {
                None => join
                    .prepared
                    .iter()
                    .map(|id| id.and_then(|id| self.take_held(id)))
                    .collect(),
                Some(_) => Vec::new(),
            };
            let have: Vec<bool> = held.iter().map(Option::is_some).collect();
            net.send(
                PartyId::Alice,
                encode(&JoinAnswer {
                    refused: refused.clone(),
                    have: have.clone(),
                }),
            )?;
            if let Some(why) = refused {
                return Err(EngineError::PartyFailed {
                    party: PartyId::Alice,
                    detail: format!("request {request}: {why}"),
                });
            }
            return Ok(Joined {
                have,
                held,
                claim: claimed,
            });
        }
        let join = encode(&PeerJoin {
            request,
            digest: digest.to_vec(),
            prepared: offered.to_vec(),
            prepare: None,
        });
        let answer = self.peer_round(net, join)?;
        if let Some(reason) = answer.refused {
            return Err(EngineError::PartyFailed {
                party: PartyId::Bob,
                detail: reason,
            });
        }
        if answer.have.len() != offered.len() {
            return Err(EngineError::Protocol(format!(
                "bob answered for {} batches, alice offered {}",
                answer.have.len(),
                offered.len()
            )));
        }
        Ok(Joined {
            have: answer.have,
            held: Vec::new(),
            claim: None,
        })
    }

    /// Alice: send a join to bob on a link from her pool and read his answer; a pooled link
    /// that died while idle (bob restarted) is replaced once.
    pub(super) fn peer_round(
        &self,
        net: &mut StreamTransport,
        join: Vec<u64>,
    ) -> Result<JoinAnswer> {
        net.meter().set_step(JOIN_STEP);
        let (link, mut reused) = self.peer_pool.get(&self.net)?;
        net.add_link(PartyId::Bob, link);
        // Bob answers a join as soon as his copy of the request arrives, and waits at most a
        // timeout for it: an answer later than two timeouts will not come (heartbeats or not).
        let saved = net.options();
        net.set_options(StreamOptions {
            max_wait: saved.timeout * 2,
            ..saved
        });
        let answer = loop {
            let r = net
                .send(PartyId::Bob, join.clone())
                .and_then(|()| net.recv(PartyId::Bob));
            match r {
                Ok(m) => break decode::<JoinAnswer>(&m, "join answer"),
                // A pooled link may have died while idle (bob restarted): use a new one.
                Err(EngineError::Disconnected { .. }) if reused => {
                    net.take_link(PartyId::Bob);
                    match self.net.connect(&Role::Bob) {
                        Ok(l) => net.add_link(PartyId::Bob, l),
                        Err(e) => break Err(e),
                    }
                    reused = false;
                }
                Err(e) => break Err(e),
            }
        };
        net.set_options(saved);
        answer
    }

    /// The outcome of a request's checks before the parties join: on a failure, alice tells bob
    /// at once (so he does not wait for her join); bob's failures answer alice's join
    /// ([`Self::refuse_peer_join`]).
    pub(super) fn checked_or_cancel<T>(
        self: &Arc<Self>,
        request: u64,
        checked: Result<T>,
    ) -> Result<T> {
        if checked.is_err() {
            self.cancel_peer(request);
        }
        checked
    }

    /// Alice: tell bob she will not run `request` (an empty digest), on a link of its own.
    pub(super) fn cancel_peer(self: &Arc<Self>, request: u64) {
        if self.index != 0 {
            return;
        }
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("party-cancel".into())
            .spawn(move || {
                if let Ok((link, _)) = me.peer_pool.get(&me.net) {
                    let join = Envelope {
                        request,
                        seq: 0,
                        step: step_code(JOIN_STEP),
                    };
                    let _ = link.send(
                        join,
                        encode(&PeerJoin {
                            request,
                            digest: Vec::new(),
                            prepared: Vec::new(),
                            prepare: None,
                        }),
                    );
                    // Dropping the link flushes the join and closes it.
                }
            });
    }

    /// Bob: wait (at most the timeout) for alice's join of `request`.
    pub(super) fn await_peer(&self, request: u64) -> Result<(PeerJoin, Link)> {
        let rx = {
            let mut r = self.rendezvous.lock().map_err(|_| poisoned())?;
            if let Some((join, link, _)) = r.parked.remove(&request) {
                return Ok((join, link));
            }
            let (tx, rx) = channel();
            r.waiting.insert(request, tx);
            rx
        };
        let timeout = self.net.options().timeout;
        let got = rx.recv_timeout(timeout);
        if let Ok(mut r) = self.rendezvous.lock() {
            r.waiting.remove(&request);
        }
        got.map_err(|_| EngineError::Timeout {
            me: PartyId::Bob,
            peer: PartyId::Alice,
            after: timeout,
        })
    }

    /// Bob: alice's join of a request that bob refused or failed gets that answer at once.
    pub(super) fn refuse_peer_join(self: &Arc<Self>, request: u64, why: &'static str) {
        if self.index != 1 {
            return;
        }
        let parked = self.rendezvous.lock().ok().and_then(|mut r| {
            r.refused.retain(|_, t| t.elapsed().as_secs() < 3600);
            r.refused.insert(request, Instant::now());
            r.parked.remove(&request)
        });
        if let Some((_, link, _)) = parked {
            self.answer_refused(request, link, why);
        }
    }

    pub(super) fn answer_refused(self: &Arc<Self>, request: u64, link: Link, why: &str) {
        let mut net = StreamTransport::new(PartyId::Bob, self.net.options());
        net.set_request(request);
        net.resume_link(PartyId::Alice, link, 0, 1);
        net.meter().set_step(JOIN_STEP);
        let _ = net.send(
            PartyId::Alice,
            encode(&JoinAnswer {
                refused: Some(format!("bob refused request {request} ({why})")),
                have: Vec::new(),
            }),
        );
        if let Some(l) = net.take_link(PartyId::Alice) {
            self.spawn_peer_link(l);
        }
    }

    /// Bob: read alice's joins on one link and hand each to the request it names.
    pub(super) fn serve_peer_link(self: &Arc<Self>, mut link: Link) {
        let options = self.net.options();
        let (env, msg) = match link.recv(PartyId::Bob, PartyId::Alice, &self.net.idle_options()) {
            Ok(m) => m,
            Err(EngineError::Disconnected { .. }) => return,
            Err(e) => {
                tracing::warn!(error = %e, "bob: dropped a link from alice");
                return;
            }
        };
        let join = match decode::<PeerJoin>(&msg, "peer join") {
            Ok(j)
                if j.request == env.request && env.seq == 0 && env.step == step_code(JOIN_STEP) =>
            {
                j
            }
            _ => {
                tracing::warn!(?env, "bob: refused a join out of step from alice");
                return;
            }
        };
        if let Some(job) = join.prepare.clone() {
            self.serve_prepare(join.request, job, link);
            return;
        }
        let request = join.request;
        let mut r = match self.rendezvous.lock() {
            Ok(r) => r,
            Err(_) => return,
        };
        if r.refused.contains_key(&request) {
            drop(r);
            self.answer_refused(request, link, "refused");
            return;
        }
        if let Some(tx) = r.waiting.remove(&request) {
            let _ = tx.send((join, link));
            return;
        }
        let timeout = options.timeout * 4;
        r.parked.retain(|_, (_, _, t)| t.elapsed() < timeout);
        r.parked.insert(request, (join, link, Instant::now()));
    }

    /// Bob: serve a link from alice again after a request that ended in step on it.
    pub(super) fn spawn_peer_link(self: &Arc<Self>, link: Link) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("party-peer".into())
            .spawn(move || me.serve_peer_link(link));
    }

    /// Send `join` to the dealer on a link from the pool (a pooled link found closed is
    /// replaced by a new connection); returns whether the link was reused (see
    /// [`Self::dealer_answer`]).
    pub(super) fn send_join(&self, net: &mut StreamTransport, join: &DealerJoin) -> Result<bool> {
        net.meter().set_step(DEALER_STEP);
        let (link, reused) = self.dealer_pool.get(&self.net)?;
        net.add_link(PartyId::Dealer, link);
        match net.send(PartyId::Dealer, encode(join)) {
            Err(EngineError::Disconnected { .. }) if reused => {
                net.take_link(PartyId::Dealer);
                net.add_link(PartyId::Dealer, self.net.connect(&Role::Dealer)?);
                net.send(PartyId::Dealer, encode(join))?;
                Ok(false)
            }
            r => r.map(|()| reused),
        }
    }

    /// The dealer's answer to a join sent with [`Self::send_join`]; a pooled link that died
    /// while idle (the dealer restarted) is replaced by a new connection once.
    pub(super) fn dealer_answer(
        &self,
        net: &mut StreamTransport,
        join: &DealerJoin,
        reused: bool,
    ) -> Result<Vec<u64>> {
        net.meter().set_step(DEALER_STEP);
        match net.recv(PartyId::Dealer) {
            Err(EngineError::Disconnected { .. }) if reused => {
                net.take_link(PartyId::Dealer);
                net.add_link(PartyId::Dealer, self.net.connect(&Role::Dealer)?);
                net.send(PartyId::Dealer, encode(join))?;
                net.recv(PartyId::Dealer)
            }
            r => r,
        }
    }

    /// Send a join to the dealer and return its answer.
    pub(super) fn dealer_round(
        &self,
        net: &mut StreamTransport,
        join: &DealerJoin,
    ) -> Result<Vec<u64>> {
        let reused = self.send_join(net, join)?;
        self.dealer_answer(net, join, reused)
    }

    /// The dealer's answer to a join: this party's seed for the request.
    pub(super) fn seed_answer(
        &self,
        net: &mut StreamTransport,
        join: &DealerJoin,
        reused: bool,
    ) -> Result<SeedGrant> {
        let reply = self.dealer_answer(net, join, reused)?;
        match reply.split_first() {
            Some((&STATUS_OK, grant)) => SeedGrant::from_words(grant),
            _ => Err(dealer_refused(&reply)),
        }
    }

    /// Join the current request at the dealer and (while the dealer answers) the other party;
    /// returns this party's seed for the request and, for bob, his claim on `model` (taken at
    /// alice's join, see [`Self::join_peer`]).
    pub(super) fn join_both(
        self: &Arc<Self>,
        net: &mut StreamTransport,
        digest: &[u8],
        u: NameUse<'_>,
        kind: JoinKind,
        frac_bits: u32,
    ) -> Result<(SeedGrant, Option<NameClaim<'_>>)> {
        let join = DealerJoin {
            request: net.request(),
            party: self.index as u8,
            model: u.name.to_string(),
            kind,
            frac_bits,
        };
        let sent = self.send_join(net, &join);
        let reused = self.checked_or_cancel(join.request, sent)?;
        let claim = self
            .join_peer(join.request, digest, &[], Some(u), net)?
            .claim;
        Ok((self.seed_answer(net, &join, reused)?, claim))
    }

    /// Bob: end the request at the dealer (committing an upload when `commit`).
    pub(super) fn end_dealer(
        &self,
        net: &mut StreamTransport,
        commit: bool,
        owner: &str,
    ) -> Result<()> {
        if self.index != 1 {
            return Ok(());
        }
        net.meter().set_step(DEALER_STEP);
        let mut msg = vec![OP_END];
        msg.extend(encode(&DealerEnd::Finish {
            commit,
            owner: owner.to_string(),
        }));
        net.send(PartyId::Dealer, msg)?;
        let reply = net.recv(PartyId::Dealer)?;
        if reply.first() != Some(&STATUS_OK) {
            return Err(dealer_refused(&reply));
        }
        Ok(())
    }

    /// Bob: end a classify request at the dealer after the reply to the owner is out (nothing
    /// waits for the dealer's acknowledgement; its link returns to the pool once it arrives).
    /// Alice: return her dealer link.
    pub(super) fn end_dealer_later(self: &Arc<Self>, net: &mut StreamTransport) {
        if self.index == 0 {
            self.release_dealer(net);
            return;
        }
        let Some((link, sent, received)) = net.take_link_state(PartyId::Dealer) else {
            return;
        };
        let mut t = StreamTransport::new(PartyId::Bob, self.net.options());
        t.set_request(net.request());
        t.resume_link(PartyId::Dealer, link, sent, received);
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("party-dealer-end".into())
            .spawn(move || {
                if me.end_dealer(&mut t, false, "").is_ok() {
                    me.release_dealer(&mut t);
                }
            });
    }

    pub(super) fn release_dealer(&self, net: &mut StreamTransport) {
        if let Some(l) = net.take_link(PartyId::Dealer) {
            // After a shutdown, links close instead of waiting in a pool.
            if !self.stopping.load(Ordering::SeqCst) {
                self.dealer_pool.put(l);
            }
        }
    }

    /// Return a finished request's peer and dealer links for reuse.
    pub(super) fn release(self: &Arc<Self>, net: &mut StreamTransport) {
        self.release_dealer(net);
        self.release_peer(net);
    }

    /// Return a finished request's link to the other party for reuse.
    pub(super) fn release_peer(self: &Arc<Self>, net: &mut StreamTransport) {
        if let Some(l) = net.take_link(self.other()) {
            if self.index == 0 {
                if !self.stopping.load(Ordering::SeqCst) {
                    self.peer_pool.put(l);
                }
            } else {
                self.spawn_peer_link(l);
            }
        }
    }

    /// Bob: tell alice the outcome of a step both must agree on (a commit, a delete).
    pub(super) fn tell_alice(&self, net: &mut StreamTransport, outcome: &Result<()>) -> Result<()> {
        net.meter().set_step("commit");
        let answer = match outcome {
            Ok(()) => vec![STATUS_OK],
            Err(e) => {
                let mut v = vec![STATUS_ERROR];
                v.extend(text_to_words(&e.to_string()));
                v
            }
        };
        net.send(PartyId::Alice, answer)
    }

    /// Alice: bob's outcome of a step both must agree on; a failure says `what` and bob's reason.
    pub(super) fn hear_bob(&self, net: &mut StreamTransport, what: &str) -> Result<()> {
        net.meter().set_step("commit");
        let r = net.recv(PartyId::Bob)?;
        match r.first() {
            Some(&STATUS_OK) => Ok(()),
            _ => Err(EngineError::PartyFailed {
                party: PartyId::Bob,
                detail: format!("{what}: {}", words_to_text(r.get(1..).unwrap_or(&[]))),
            }),
        }
    }

    pub(super) fn other(&self) -> PartyId {
        PartyId::compute(1 - self.index)
    }

    /// Run `body` on a party object of this request over `net` (its links, with their
    /// sequence numbers, are handed back to `net` afterwards, whatever the outcome).
    pub(super) fn with_party<R>(
        &self,
        net: &mut StreamTransport,
        fx: FixedPoint,
        seed: Option<SeedGrant>,
        body: impl FnOnce(&mut Party) -> Result<R>,
    ) -> Result<R> {
        let taken = std::mem::replace(net, StreamTransport::new(self.me(), self.net.options()));
        let mut party =
            Party::with_seed(self.index, Box::new(taken), self.backend.clone(), fx, seed);
        let r = body(&mut party);
        match party.into_transport().into_stream() {
            Some(back) => *net = back,
            None => unreachable!("a service party runs over a stream transport"),
        }
        r
    }
}
