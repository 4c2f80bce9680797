//! Outbound messages of many groups, grouped by destination node, so a driver sends one
//! envelope per node per flush instead of one per group (Redpanda's heartbeat manager does this
//! for heartbeats; here every message kind coalesces). Destinations come out in node order and
//! messages of one destination in the order they were pushed, so a simulation replays exactly.

use std::collections::BTreeMap;

use crate::message::Message;
use crate::types::{GroupId, NodeId};

/// Messages for one destination node, each tagged with its group.
pub type Envelope<P> = Vec<(GroupId, Message<P>)>;

#[derive(Debug)]
pub struct Outbox<P> {
    by_node: BTreeMap<NodeId, Envelope<P>>,
    messages: usize,
}

impl<P> Default for Outbox<P> {
    fn default() -> Self {
        Outbox { by_node: BTreeMap::new(), messages: 0 }
    }
}

impl<P> Outbox<P> {
    pub fn push(&mut self, to: NodeId, group: GroupId, msg: Message<P>) {
        self.by_node.entry(to).or_default().push((group, msg));
        self.messages += 1;
    }

    /// Messages waiting, over all destinations.
    pub fn len(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Destinations waiting: the number of envelopes `drain` will return.
    pub fn destinations(&self) -> usize {
        self.by_node.len()
    }

    /// Takes every envelope, one per destination node, in node order.
    pub fn drain(&mut self) -> impl Iterator<Item = (NodeId, Envelope<P>)> {
        self.messages = 0;
        std::mem::take(&mut self.by_node).into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_destination_in_order() {
        let mut outbox: Outbox<()> = Outbox::default();
        for g in 0..1000u64 {
            for to in [2, 3] {
                outbox.push(to, GroupId(g), Message::Heartbeat { term: 1, commit: g });
            }
        }
        assert_eq!(outbox.len(), 2000);
        assert_eq!(outbox.destinations(), 2);
        let envelopes: Vec<_> = outbox.drain().collect();
        assert_eq!(envelopes.len(), 2);
        assert_eq!(envelopes[0].0, 2);
        assert_eq!(envelopes[0].1.len(), 1000);
        assert_eq!(envelopes[0].1[7].0, GroupId(7));
        assert!(outbox.is_empty());
    }
}
