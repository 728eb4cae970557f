//! Where an instance subscribes to invalidation events, for each way of reaching Redis.
//!
//! - Standalone: the server.
//! - Sentinel: the current master, asked of the sentinels at every (re)subscription; a
//!   subscription ends when the sentinels announce a switch (see `super::sentinel`).
//! - Cluster: classic PUBLISH reaches every node (the cluster bus forwards it), so any node
//!   would do. keygate prefers the master of its own slot — where its PUBLISHes are sent —
//!   so that delivery does not depend on the cluster bus, and falls back to any other live
//!   node, then to the seeds.
//!
//! The cluster client's own pub/sub support is not used on purpose: it resubscribes
//! silently after a reconnect, while keygate must see every gap to revalidate its caches
//! (see `crate::events`).

use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use redis::aio::PubSub;
use redis::sentinel::SentinelClient;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Msg, RedisError, RedisResult};

use super::conn::{at_node, cluster_seeds, describe, node_config, timed_out};
use super::sentinel::{sentinel_client, sentinel_nodes, SwitchWatch, SENTINEL_LOOKUP_TIMEOUT};
use crate::config::{RedisTarget, RedisTopology};

/// Bound on connecting to one node and confirming the subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on asking one node for the cluster's layout.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Finds a node to subscribe on, anew for every subscription.
pub struct Subscriber {
    kind: Kind,
}

enum Kind {
    Standalone(ConnectionInfo),
    Cluster {
        url: ConnectionInfo,
        seeds: Vec<ConnectionInfo>,
        /// The nodes the last discovery found, tried when the seeds are gone.
        known: Vec<ConnectionInfo>,
    },
    Sentinel {
        client: Box<SentinelClient>,
        sentinels: Vec<ConnectionInfo>,
        master: String,
        /// Started with the first subscription (it needs the runtime).
        switches: Option<SwitchWatch>,
    },
}

/// The messages of one subscription; the stream ends when the subscription does.
pub type Messages = BoxStream<'static, Msg>;

impl Subscriber {
    pub fn new(target: &RedisTarget) -> RedisResult<Self> {
        let url = target.url.expose().into_connection_info()?;
        let kind = match &target.topology {
            RedisTopology::Standalone => Kind::Standalone(url),
            RedisTopology::Cluster { seeds } => Kind::Cluster {
                seeds: cluster_seeds(&url, seeds),
                url,
                known: Vec::new(),
            },
            RedisTopology::Sentinel {
                master,
                sentinels,
                auth,
            } => {
                let sentinels = sentinel_nodes(&url, sentinels, *auth);
                Kind::Sentinel {
                    client: Box::new(sentinel_client(&url, master, &sentinels)?),
                    sentinels,
                    master: master.clone(),
                    switches: None,
                }
            }
        };
        Ok(Self { kind })
    }

    /// Subscribes to `channel` on the best node reachable now; returns its messages and the
    /// node's address (for logs).
    pub async fn subscribe(&mut self, channel: &str) -> RedisResult<(Messages, String)> {
        match &mut self.kind {
            Kind::Standalone(url) => messages(subscribe_at(url, channel).await),
            Kind::Sentinel {
                client,
                sentinels,
                master,
                switches,
            } => {
                let switches = switches
                    .get_or_insert_with(|| SwitchWatch::start(sentinels.clone(), master.clone()));
                // Taken before asking for the master, so a switch during the lookup counts.
                let switched = switches.next();
                let found =
                    tokio::time::timeout(SENTINEL_LOOKUP_TIMEOUT, client.async_get_client())
                        .await
                        .map_err(|_| timed_out("asking the sentinels for the master"))??;
                let (pubsub, node) = subscribe_at(found.get_connection_info(), channel).await?;
                // The old master may keep delivering for seconds after a switch, but the
                // publishers have moved on: end the subscription so it moves too.
                let messages = pubsub.into_on_message().take_until(switched).boxed();
                Ok((messages, node))
            }
            Kind::Cluster { url, seeds, known } => {
                let candidates = cluster_candidates(url, seeds, known, channel).await;
                let mut last = None;
                for node in &candidates {
                    match subscribe_at(node, channel).await {
                        Ok(subscribed) => return messages(Ok(subscribed)),
                        Err(e) => {
                            tracing::debug!(node = %describe(node), error = %e, "cannot subscribe on this node");
                            last = Some(e);
                        }
                    }
                }
                Err(last.unwrap_or_else(|| timed_out("finding a cluster node")))
            }
        }
    }
}

fn messages(subscribed: RedisResult<(PubSub, String)>) -> RedisResult<(Messages, String)> {
    subscribed.map(|(pubsub, node)| (pubsub.into_on_message().boxed(), node))
}

async fn subscribe_at(node: &ConnectionInfo, channel: &str) -> RedisResult<(PubSub, String)> {
    let subscribe = async {
        let mut pubsub = redis::Client::open(node.clone())?
            .get_async_pubsub()
            .await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, RedisError>(pubsub)
    };
    let pubsub = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe)
        .await
        .map_err(|_| timed_out("subscribing"))??;
    Ok((pubsub, describe(node)))
}

/// Nodes to try, best first: what a seed (or a node found before) says about the cluster,
/// then those seeds and nodes themselves.
async fn cluster_candidates(
    url: &ConnectionInfo,
    seeds: &[ConnectionInfo],
    known: &mut Vec<ConnectionInfo>,
    channel: &str,
) -> Vec<ConnectionInfo> {
    let mut fallback = seeds.to_vec();
    push_new(&mut fallback, known.iter().cloned());
    for node in &fallback {
        match tokio::time::timeout(DISCOVER_TIMEOUT, discover(url, node, channel)).await {
            Ok(Ok(found)) if !found.is_empty() => {
                *known = found.clone();
                let mut candidates = found;
                push_new(&mut candidates, fallback.iter().cloned());
                return candidates;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(node = %describe(node), error = %e, "cluster discovery failed")
            }
            Err(_) => tracing::debug!(node = %describe(node), "cluster discovery timed out"),
        }
    }
    fallback
}

/// Asks `node` which slot `channel` hashes to and who serves it.
async fn discover(
    url: &ConnectionInfo,
    node: &ConnectionInfo,
    channel: &str,
) -> RedisResult<Vec<ConnectionInfo>> {
    let mut conn = redis::Client::open(node.clone())?
        .get_multiplexed_async_connection_with_config(&node_config())
        .await?;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(channel)
        .query_async(&mut conn)
        .await?;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await?;
    let asked = match node.addr() {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.as_str(),
        _ => "",
    };
    Ok(subscribe_order(&nodes, slot, asked)
        .into_iter()
        .map(|(host, port)| at_node(url, &host, port))
        .collect())
}

/// The live nodes of a `CLUSTER NODES` reply, as `(host, port)`: the master serving `slot`
/// first, then the other masters, then replicas. A node that does not know its own address
/// is given `asked`, the host the question went to.
fn subscribe_order(nodes: &str, slot: u16, asked: &str) -> Vec<(String, u16)> {
    let mut ranked: Vec<(u8, String, u16)> = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_id, addr, flags, _master, _ping, _pong, _epoch, link, slots @ ..] = &fields[..]
        else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        let down = flags
            .iter()
            .any(|f| matches!(*f, "fail" | "fail?" | "handshake" | "noaddr"));
        if down || *link != "connected" {
            continue;
        }
        // `ip:port@cport[,hostname]`
        let Some((host, port)) = addr
            .split([',', '@'])
            .next()
            .and_then(|a| a.rsplit_once(':'))
        else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        let host = if host.is_empty() { asked } else { host };
        let master = flags.contains(&"master");
        let serves = slots.iter().any(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
        });
        let rank = match (master, serves) {
            (true, true) => 0,
            (true, false) => 1,
            _ => 2,
        };
        ranked.push((rank, host.to_owned(), port));
    }
    ranked.sort_by_key(|(rank, ..)| *rank);
    ranked
        .into_iter()
        .map(|(_, host, port)| (host, port))
        .collect()
}

fn push_new(list: &mut Vec<ConnectionInfo>, more: impl IntoIterator<Item = ConnectionInfo>) {
    for node in more {
        if !list.iter().any(|n| n.addr() == node.addr()) {
            list.push(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
e8e9 127.0.0.1:17006@27006 slave 35f6 0 1795432652670 2 connected
4641 127.0.0.1:17004@27004 slave,fail ec02 0 1795432652670 3 disconnected
35f6 127.0.0.1:17002@27002 master - 0 1795432652670 2 connected 5461-10922
7972 127.0.0.1:17005@27005 slave a032 0 1795432652670 1 connected
a032 :17001@27001 myself,master - 0 1795432652000 1 connected 0-5460 [5461->-35f6]
ec02 127.0.0.1:17003@27003,redis-3.example master - 0 1795432652569 3 connected 10923-16382 16383
";

    #[test]
    fn the_master_of_the_slot_comes_first_and_failed_nodes_are_left_out() {
        let order = subscribe_order(NODES, 10932, "10.0.0.9");
        let ports: Vec<u16> = order.iter().map(|(_, p)| *p).collect();
        assert_eq!(ports[0], 17003, "{order:?}");
        assert_eq!(&ports[1..3], &[17002, 17001], "{order:?}");
        assert_eq!(&ports[3..], &[17006, 17005], "{order:?}");
        assert!(
            !ports.contains(&17004),
            "a failed node is skipped: {order:?}"
        );
        assert!(order.contains(&("10.0.0.9".to_owned(), 17001)), "{order:?}");
        assert_eq!(
            order[0].0, "127.0.0.1",
            "the IP, not the announced hostname"
        );
    }

    #[test]
    fn single_slots_and_the_first_range_are_matched() {
        assert_eq!(subscribe_order(NODES, 16383, "h")[0].1, 17003);
        assert_eq!(subscribe_order(NODES, 0, "h")[0].1, 17001);
        assert_eq!(subscribe_order(NODES, 5461, "h")[0].1, 17002);
        assert!(subscribe_order("garbage\n\n", 1, "h").is_empty());
    }
}
