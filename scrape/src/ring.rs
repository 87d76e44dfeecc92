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
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use md5::{Digest, Md5};
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
/// holds and when etcd last confirmed it. A broken session (etcd restarted,
/// a watch compacted) reconnects and keeps the same lease and key while the
/// lease lives, so a short blip moves no targets.
struct Standing {
    lease: Option<i64>,
    renewed: Instant,
    /// Whether the member list is published (this collector scrapes).
    visible: bool,
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
                let mut standing = Standing {
                    lease: None,
                    renewed: Instant::now(),
                    visible: false,
                };
                let session = Session {
                    name: &config.name,
                    endpoints,
                    prefix,
                    ttl: *lease_ttl,
                    tx: &tx,
                    gauge: &members_gauge,
                };
                loop {
                    let mut stop2 = stop.clone();
                    let r = tokio::select! {
                        biased;
                        r = session.run(&mut standing, &mut stop) => r,
                        _ = stop2.changed() => Ok(()),
                    };
                    if *stop.borrow() {
                        // Stopped while (re)connecting: still leave the ring
                        // at once rather than after the lease runs out.
                        if let Some(lease) = standing.lease {
                            if let Ok(mut c) = connect(endpoints).await {
                                let _ = call("lease revoke", c.lease_revoke(lease)).await;
                            }
                        }
                        let _ = tx.send(None);
                        return;
                    }
                    match r {
                        Ok(()) => {
                            let _ = tx.send(None);
                            return;
                        }
                        Err(e) => warn!(
                            collector = config.name.as_str(),
                            error = e.as_str(),
                            "ring session broken; reconnecting (targets kept while the lease lives)"
                        ),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => {
                            let _ = tx.send(None);
                            return;
                        }
                    }
                }
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
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("etcd {what}: {e}")),
        Err(_) => Err(format!("etcd {what}: no answer in {CALL_TIMEOUT:?}")),
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
}

impl Session<'_> {
    /// When this collector must stop scraping if etcd has not confirmed its
    /// lease since: before etcd can expire it (etcd counts from when it got
    /// the keepalive, a little before we hear back).
    fn give_up_at(&self, standing: &Standing) -> Instant {
        standing.renewed + self.ttl * 2 / 3
    }

    fn hide(&self, standing: &mut Standing) {
        if standing.visible {
            standing.visible = false;
            let _ = self.tx.send(None);
        }
    }

    fn publish(&self, standing: &mut Standing, members: &BTreeSet<String>) {
        standing.visible = true;
        self.gauge.set(members.len() as i64);
        let _ = self
            .tx
            .send(Some(Arc::new(members.iter().cloned().collect())));
    }

    /// One session: connect, keep (or take) the lease, claim the name,
    /// follow the members. `Ok` when stopped (the lease revoked), `Err` when
    /// the session broke.
    async fn run(
        &self,
        standing: &mut Standing,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        if Instant::now() >= self.give_up_at(standing) {
            self.hide(standing);
        }
        let mut client = connect(self.endpoints).await?;
        let key = format!("{}{}", self.prefix, self.name);
        let ttl_secs = self.ttl.as_secs().max(1) as i64;
        // The lease of the last session, if etcd still has it.
        let mut kept = None;
        if let Some(lease) = standing.lease {
            let (mut keeper, mut renewals) =
                call("lease keepalive", client.lease_keep_alive(lease)).await?;
            call("lease keepalive", keeper.keep_alive()).await?;
            match tokio::time::timeout(CALL_TIMEOUT, renewals.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    standing.renewed = Instant::now();
                    kept = Some((lease, keeper, renewals));
                }
                _ => {
                    standing.lease = None;
                    self.hide(standing);
                }
            }
        }
        let (lease, mut keeper, mut renewals) = match kept {
            Some(k) => k,
            None => {
                let lease = call("lease grant", client.lease_grant(ttl_secs, None))
                    .await?
                    .id();
                standing.lease = Some(lease);
                standing.renewed = Instant::now();
                let (keeper, renewals) =
                    call("lease keepalive", client.lease_keep_alive(lease)).await?;
                (lease, keeper, renewals)
            }
        };
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
            call("lease keepalive", keeper.keep_alive()).await?;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => {
                    let _ = call("lease revoke", client.lease_revoke(lease)).await;
                    standing.lease = None;
                    return Ok(());
                }
            }
            if let Ok(Ok(Some(r))) =
                tokio::time::timeout(Duration::from_millis(1), renewals.message()).await
            {
                if r.ttl() > 0 {
                    standing.renewed = Instant::now();
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
        self.publish(standing, &members);
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
            let give_up = tokio::time::Instant::from_std(self.give_up_at(standing));
            tokio::select! {
                _ = tick.tick() => {
                    call("lease keepalive", keeper.keep_alive()).await?;
                }
                _ = tokio::time::sleep_until(give_up), if standing.visible => {
                    // Not confirmed in time: the others may take our targets
                    // any moment, so stop scraping them first.
                    self.hide(standing);
                    warn!(collector = self.name, "lease not confirmed in time; scraping nothing until it is");
                }
                r = renewals.message() => match r {
                    Ok(Some(r)) if r.ttl() > 0 => {
                        standing.renewed = Instant::now();
                        if !standing.visible {
                            self.publish(standing, &members);
                        }
                    }
                    Ok(Some(_)) => {
                        standing.lease = None;
                        self.hide(standing);
                        return Err("lease expired".into());
                    }
                    Ok(None) => return Err("lease keepalive stream ended".into()),
                    Err(e) => return Err(format!("lease keepalive: {e}")),
                },
                w = watch.message() => {
                    let w = w.map_err(|e| format!("watch: {e}"))?.ok_or("watch ended")?;
                    if w.canceled() {
                        return Err("watch canceled (history compacted); listing again".into());
                    }
                    for ev in w.events() {
                        let Some(kv) = ev.kv() else { continue };
                        match ev.event_type() {
                            EventType::Put => {
                                if let Some(m) = member_of(self.prefix, kv) {
                                    members.insert(m.to_string());
                                }
                            }
                            EventType::Delete => {
                                if let Some(m) = kv.key_str().ok().and_then(|k| k.strip_prefix(self.prefix)) {
                                    members.remove(m);
                                }
                            }
                        }
                    }
                    if !members.contains(self.name) {
                        // Our key is gone (deleted by hand): claim it again.
                        self.hide(standing);
                        return Err("this collector's key was deleted".into());
                    }
                    if standing.visible {
                        self.publish(standing, &members);
                    }
                }
                _ = stop.changed() => {
                    self.hide(standing);
                    let _ = call("lease revoke", client.lease_revoke(lease)).await;
                    standing.lease = None;
                    info!(collector = self.name, "left the scrape ring");
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
