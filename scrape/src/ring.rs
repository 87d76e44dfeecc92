//! Several collectors share a job's targets: consistent hashing with
//! bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018) over the members'
//! virtual nodes, so each target is scraped by exactly one member, a member
//! never gets more than `load_factor` times its fair share, and a change of
//! membership moves about 1/n of the targets.
//!
//! Membership is a static list, or etcd leases: each collector claims the
//! key `<prefix><name>` under a lease it keeps alive and watches the prefix.
//! A collector that stops revokes its lease, so its targets move at once; one
//! that dies stops renewing, so they move when the lease expires (one
//! `lease_ttl`). A collector that cannot renew its own lease for a whole
//! `lease_ttl` scrapes nothing, since the others have taken its targets.
//! Every collector computes the same placement from the same members and
//! targets, with no coordination beyond the membership.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use md5::{Digest, Md5};
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{info, warn};

/// A stable 64-bit hash (the same on every machine and build).
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let d = Md5::digest(bytes);
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Points per member on the ring: enough that shares differ by a few percent.
const VIRTUAL_NODES: usize = 160;

/// For each target hash, the index (into `members`) of the member that
/// scrapes it. Deterministic in its inputs: every collector agrees.
pub fn place(members: &[String], targets: &[u64], load_factor: f64) -> Vec<usize> {
    if members.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<(u64, usize)> = members
        .iter()
        .enumerate()
        .flat_map(|(m, name)| {
            (0..VIRTUAL_NODES).map(move |v| (hash64(format!("{name}#{v}").as_bytes()), m))
        })
        .collect();
    points.sort_unstable();
    let capacity = ((targets.len() as f64 * load_factor.max(1.0)) / members.len() as f64)
        .ceil()
        .max(1.0) as usize;
    let mut load = vec![0usize; members.len()];
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_unstable_by_key(|&i| (targets[i], i));
    let mut owner = vec![0usize; targets.len()];
    for i in order {
        let start = points.partition_point(|(p, _)| *p < targets[i]);
        let mut k = start;
        loop {
            let (_, m) = points[k % points.len()];
            if load[m] < capacity {
                load[m] += 1;
                owner[i] = m;
                break;
            }
            k += 1;
        }
    }
    owner
}

/// Where the members come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Membership {
    Static(Vec<String>),
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        lease_ttl: Duration,
    },
}

/// This collector's place in the ring.
#[derive(Debug, Clone, PartialEq)]
pub struct RingConfig {
    /// This collector's name: unique among the members.
    pub name: String,
    pub membership: Membership,
    /// A member takes at most this times its fair share (≥ 1).
    pub load_factor: f64,
}

/// The members as this collector sees them; `None` while it is not one
/// (not registered yet, or its lease is lost).
pub(crate) type MemberView = watch::Receiver<Option<Arc<Vec<String>>>>;

/// This collector's standing in etcd, kept across sessions: the lease it
/// holds and since when etcd has confirmed it. A broken session (etcd
/// restarted, a watch compacted) reconnects and keeps the same lease and key
/// while the lease lives, so a short blip moves no targets. Shared (by
/// reference) between a session and the watchdog that stops scraping when
/// the lease may have expired, whatever the session is waiting on.
struct Standing {
    lease: Mutex<Option<i64>>,
    /// When the keepalive etcd last answered was sent: etcd's expiry counts
    /// from no earlier than that.
    renewed: Mutex<Instant>,
    /// Whether the member list is published (this collector scrapes).
    visible: AtomicBool,
}

/// Starts keeping the member list; the task revokes the lease on stop.
pub(crate) fn start(
    config: RingConfig,
    members_gauge: prometheus_client::metrics::gauge::Gauge,
    mut stop: watch::Receiver<bool>,
) -> (MemberView, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let handle = tokio::spawn(async move {
        match &config.membership {
            Membership::Static(list) => {
                let mut list = list.clone();
                list.sort();
                list.dedup();
                members_gauge.set(list.len() as i64);
                let _ = tx.send(Some(Arc::new(list)));
                let _ = stop.changed().await;
            }
            Membership::Etcd {
                endpoints,
                prefix,
                lease_ttl,
            } => {
                let standing = Standing {
                    lease: Mutex::new(None),
                    renewed: Mutex::new(Instant::now()),
                    visible: AtomicBool::new(false),
                };
                let session = Session {
                    name: &config.name,
                    endpoints,
                    prefix,
                    // What etcd grants: whole seconds.
                    ttl: Duration::from_secs(lease_ttl.as_secs().max(1)),
                    tx: &tx,
                    gauge: &members_gauge,
                    standing: &standing,
                };
                session.follow(&mut stop).await;
            }
        }
    });
    (rx, handle)
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

async fn call<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    call_within(CALL_TIMEOUT, what, f).await
}

/// An etcd call that answers within `limit`, its error naming the call.
pub(crate) async fn call_within<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("etcd {what}: {e}")),
        Err(_) => Err(format!("etcd {what}: no answer in {limit:?}")),
    }
}

pub(crate) async fn connect(endpoints: &[String]) -> Result<Client, String> {
    call(
        "connect",
        Client::connect(
            endpoints,
            Some(
                ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(3))
                    // A half-open connection is noticed, not waited on.
                    .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
                    .with_require_leader(true),
            ),
        ),
    )
    .await
}

/// A member key: `<prefix><name>` held under a lease (keys put by hand, or
/// deeper under the prefix, are not members).
fn member_of<'a>(prefix: &str, kv: &'a etcd_client::KeyValue) -> Option<&'a str> {
    let name = kv.key_str().ok()?.strip_prefix(prefix)?;
    (kv.lease() != 0 && !name.is_empty() && !name.contains('/')).then_some(name)
}

struct Session<'a> {
    name: &'a str,
    endpoints: &'a [String],
    prefix: &'a str,
    ttl: Duration,
    tx: &'a watch::Sender<Option<Arc<Vec<String>>>>,
    gauge: &'a prometheus_client::metrics::gauge::Gauge,
    standing: &'a Standing,
}

/// Keepalives sent and not answered yet, oldest first.
type Pending = std::collections::VecDeque<Instant>;

impl Session<'_> {
    /// When this collector must stop scraping if etcd has not confirmed its
    /// lease since: well before etcd can expire it.
    fn give_up_at(&self) -> Instant {
        *self.standing.renewed.lock() + self.ttl * 2 / 3
    }

    fn hide(&self) {
        if self.standing.visible.swap(false, Ordering::SeqCst) {
            let _ = self.tx.send(None);
        }
    }

    /// Publishes the members, unless the lease may be gone.
    fn publish(&self, members: &BTreeSet<String>) {
        self.gauge.set(members.len() as i64);
        if Instant::now() >= self.give_up_at() {
            self.hide();
            return;
        }
        self.standing.visible.store(true, Ordering::SeqCst);
        let _ = self
            .tx
            .send(Some(Arc::new(members.iter().cloned().collect())));
    }

    /// Sessions until stopped, each watched over: whatever a session waits
    /// on (a connect, a call, the reconnect pause), scraping stops when the
    /// lease may have expired. On stop the lease is revoked, so the others
    /// take the targets at once.
    async fn follow(&self, stop: &mut watch::Receiver<bool>) {
        loop {
            let mut stop2 = stop.clone();
            {
                let run = self.run(stop);
                tokio::pin!(run);
                loop {
                    let give_up = tokio::time::Instant::from_std(self.give_up_at());
                    let visible = self.standing.visible.load(Ordering::SeqCst);
                    tokio::select! {
                        biased;
                        r = &mut run => {
                            if let Err(e) = r {
                                warn!(
                                    collector = self.name,
                                    error = e.as_str(),
                                    "ring session broken; reconnecting (targets kept while the lease lives)"
                                );
                            }
                            break;
                        }
                        _ = tokio::time::sleep_until(give_up), if visible => {
                            self.hide();
                            warn!(collector = self.name, "lease not confirmed in time; scraping nothing until it is");
                        }
                        _ = stop2.changed() => break,
                    }
                }
            }
            if *stop.borrow() || stop.has_changed().is_err() {
                self.leave().await;
                return;
            }
            let pause = tokio::time::sleep(Duration::from_millis(500));
            tokio::pin!(pause);
            loop {
                let give_up = tokio::time::Instant::from_std(self.give_up_at());
                let visible = self.standing.visible.load(Ordering::SeqCst);
                tokio::select! {
                    _ = &mut pause => break,
                    _ = tokio::time::sleep_until(give_up), if visible => self.hide(),
                    _ = stop.changed() => break,
                }
            }
            if *stop.borrow() {
                self.leave().await;
                return;
            }
        }
    }

    /// Stops scraping, then revokes the lease if a session has not.
    async fn leave(&self) {
        self.hide();
        let lease = self.standing.lease.lock().take();
        if let Some(lease) = lease {
            if let Ok(mut c) = connect(self.endpoints).await {
                let _ = call("lease revoke", c.lease_revoke(lease)).await;
            }
        }
        info!(collector = self.name, "left the scrape ring");
    }

    /// An error; when etcd says the lease is not found, the lease is
    /// dropped, so the next session takes a new one.
    fn unless_gone(&self, e: String) -> String {
        if e.contains("lease not found") {
            *self.standing.lease.lock() = None;
            self.hide();
        }
        e
    }

    /// A keepalive answer: the lease lives (from when that keepalive was
    /// sent), or it is gone.
    fn renewal(&self, pending: &mut Pending, ttl: i64) -> Result<(), String> {
        let sent = pending.pop_front().unwrap_or_else(Instant::now);
        if ttl <= 0 {
            *self.standing.lease.lock() = None;
            self.hide();
            return Err("lease expired".into());
        }
        let mut renewed = self.standing.renewed.lock();
        if sent > *renewed {
            *renewed = sent;
        }
        Ok(())
    }

    /// One session: connect, keep (or take) the lease, claim the name,
    /// follow the members. `Ok` when stopped (the lease revoked), `Err` when
    /// the session broke.
    async fn run(&self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let mut client = connect(self.endpoints).await?;
        let key = format!("{}{}", self.prefix, self.name);
        let ttl_secs = self.ttl.as_secs() as i64;
        let mut pending = Pending::new();
        let held = *self.standing.lease.lock();
        let lease = match held {
            Some(lease) => lease,
            None => {
                let sent = Instant::now();
                let lease = call("lease grant", client.lease_grant(ttl_secs, None))
                    .await?
                    .id();
                *self.standing.lease.lock() = Some(lease);
                *self.standing.renewed.lock() = sent;
                lease
            }
        };
        // Opening the keepalive stream sends the first keepalive.
        pending.push_back(Instant::now());
        let (mut keeper, mut renewals) = call("lease keepalive", client.lease_keep_alive(lease))
            .await
            .map_err(|e| self.unless_gone(e))?;
        if held.is_some() {
            // Asked again explicitly: etcd answers this one even when the
            // stream's opening keepalive went to a server still starting.
            pending.push_back(Instant::now());
            call("lease keepalive", keeper.keep_alive()).await?;
            // The lease of the last session: etcd must still have it. A slow
            // answer is a broken session (the lease is kept and tried again
            // soon, well within its life); only etcd saying it is gone drops
            // it.
            let wait = (self.ttl / 3).max(Duration::from_millis(500));
            match tokio::time::timeout(wait, renewals.message()).await {
                Ok(Ok(Some(r))) => self.renewal(&mut pending, r.ttl())?,
                Ok(Ok(None)) => return Err("lease keepalive stream ended".into()),
                Ok(Err(e)) => return Err(self.unless_gone(format!("lease keepalive: {e}"))),
                Err(_) => return Err("lease keepalive: no answer".into()),
            }
        }
        // Claim the name: free, or already ours (this lease). A restarted
        // collector waits for its old lease to expire.
        let mut warned = false;
        loop {
            let put = TxnOp::put(
                key.clone(),
                self.name,
                Some(PutOptions::new().with_lease(lease)),
            );
            let free = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([put.clone()]);
            if call("claim", client.txn(free)).await?.succeeded() {
                break;
            }
            let ours = Txn::new()
                .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                .and_then([put]);
            if call("claim", client.txn(ours)).await?.succeeded() {
                break;
            }
            if !warned {
                warn!(
                    collector = self.name,
                    key = key.as_str(),
                    "collector name is held by another live collector (or a lease not yet expired); waiting"
                );
                warned = true;
            }
            pending.push_back(Instant::now());
            call("lease keepalive", keeper.keep_alive()).await?;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                r = renewals.message() => match r {
                    Ok(Some(r)) => self.renewal(&mut pending, r.ttl())?,
                    Ok(None) => return Err("lease keepalive stream ended".into()),
                    Err(e) => return Err(format!("lease keepalive: {e}")),
                },
                _ = stop.changed() => {
                    let _ = call("lease revoke", client.lease_revoke(lease)).await;
                    *self.standing.lease.lock() = None;
                    return Ok(());
                }
            }
        }
        let listed = call(
            "list members",
            client.get(self.prefix, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = listed.header().map_or(0, |h| h.revision());
        let mut members: BTreeSet<String> = listed
            .kvs()
            .iter()
            .filter_map(|kv| member_of(self.prefix, kv).map(str::to_string))
            .collect();
        members.insert(self.name.to_string());
        self.publish(&members);
        info!(
            collector = self.name,
            members = members.len(),
            "in the scrape ring"
        );
        let mut watch = call(
            "watch members",
            client.watch(
                self.prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
        let renew_every = (self.ttl / 3).max(Duration::from_millis(200));
        let mut tick = tokio::time::interval(renew_every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    pending.push_back(Instant::now());
                    call("lease keepalive", keeper.keep_alive()).await?;
                }
                r = renewals.message() => match r {
                    Ok(Some(r)) => {
                        self.renewal(&mut pending, r.ttl())?;
                        if !self.standing.visible.load(Ordering::SeqCst) {
                            self.publish(&members);
                        }
                    }
                    Ok(None) => return Err("lease keepalive stream ended".into()),
                    Err(e) => return Err(self.unless_gone(format!("lease keepalive: {e}"))),
                },
                w = watch.message() => {
                    let w = w.map_err(|e| format!("watch: {e}"))?.ok_or("watch ended")?;
                    if w.canceled() {
                        return Err("watch canceled (history compacted); listing again".into());
                    }
                    for ev in w.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let Some(name) = kv.key_str().ok().and_then(|k| k.strip_prefix(self.prefix)) else {
                            continue;
                        };
                        // A put without a lease (by hand) over a member's
                        // key takes it out of the ring, as a new collector
                        // listing the prefix would see it.
                        match (ev.event_type(), member_of(self.prefix, kv)) {
                            (EventType::Put, Some(m)) => {
                                members.insert(m.to_string());
                            }
                            _ => {
                                members.remove(name);
                            }
                        }
                    }
                    if !members.contains(self.name) {
                        // Our key is gone or overwritten: claim it again.
                        self.hide();
                        return Err("this collector's key was deleted or overwritten".into());
                    }
                    if self.standing.visible.load(Ordering::SeqCst) {
                        self.publish(&members);
                    }
                }
                _ = stop.changed() => {
                    self.hide();
                    let _ = call("lease revoke", client.lease_revoke(lease)).await;
                    *self.standing.lease.lock() = None;
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("collector-{i}")).collect()
    }

    fn targets(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| hash64(format!("http://10.0.{}.{}:9100/metrics", i / 250, i % 250).as_bytes()))
            .collect()
    }

    #[test]
    fn every_target_has_one_owner_within_the_bound() {
        let t = targets(1000);
        let owners = place(&names(3), &t, 1.25);
        assert_eq!(owners.len(), 1000);
        let mut load = [0usize; 3];
        for o in owners {
            load[o] += 1;
        }
        assert!(load.iter().all(|l| *l <= 417 && *l > 200), "{load:?}");
        assert_eq!(place(&names(3), &t, 1.25), place(&names(3), &t, 1.25));
        assert!(place(&[], &t, 1.25).is_empty());
    }

    #[test]
    fn a_new_member_moves_about_one_nth() {
        let t = targets(1000);
        let before = place(&names(3), &t, 1.25);
        let after = place(&names(4), &t, 1.25);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // 1/4 of the targets belong to the new member; bounded loads move a
        // few more.
        assert!((200..=400).contains(&moved), "{moved} moved");
        // Everything that moved went to the new member, or made room for it.
        let to_new = after.iter().filter(|m| **m == 3).count();
        assert!(to_new >= 200, "{to_new}");
    }

    #[test]
    fn a_lost_member_moves_only_its_targets_mostly() {
        let t = targets(1000);
        let all = names(3);
        let before = place(&all, &t, 1.25);
        let survivors = vec![all[0].clone(), all[2].clone()];
        let after = place(&survivors, &t, 1.25);
        let kept = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 1 && all[**b] == survivors[**a])
            .count();
        let had = before.iter().filter(|b| **b != 1).count();
        assert!(kept as f64 >= had as f64 * 0.9, "{kept} of {had} kept");
    }
}
