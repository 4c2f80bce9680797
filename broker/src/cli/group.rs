//! `spate group`: list, describe and delete consumer groups; reset their committed offsets.

use clap::Subcommand;
use spate_client::{Client, Seek};

use super::parse_seek;

#[derive(Subcommand)]
pub(crate) enum GroupCommand {
    /// One group per line: name, state.
    List,
    /// State, members and their partitions, and per partition the committed offset, log end
    /// and lag.
    Describe { group: String },
    /// Delete the group and its committed offsets (refused while the group has members).
    Delete { group: String },
    /// Set the group's committed offsets for a topic (refused while the group has members).
    ResetOffsets {
        group: String,
        /// The topic whose offsets to set (every partition of it).
        #[arg(long)]
        topic: String,
        /// earliest, latest, an offset, or @UNIX_MS.
        #[arg(long)]
        to: String,
    },
}

pub(crate) async fn group(client: Client, command: GroupCommand) -> Result<(), String> {
    use spate_protocol::wire::{self, RequestBodyT, ResponseBodyT};
    match command {
        GroupCommand::List => {
            // In a cluster every group lives on the coordinator: ask it.
            let response = client
                .group_call("", RequestBodyT::ListGroupsRequest(Box::default()))
                .await
                .map_err(|e| e.to_string())?;
            let ResponseBodyT::ListGroupsResponse(listed) = response else {
                return Err("unexpected response".into());
            };
            for group in listed.groups.into_iter().flatten() {
                println!(
                    "{}\t{}",
                    group.group_id.unwrap_or_default(),
                    group.state.unwrap_or_default()
                );
            }
        }
        GroupCommand::Describe { group } => {
            let request =
                RequestBodyT::DescribeGroupsRequest(Box::new(wire::DescribeGroupsRequestT {
                    groups: Some(vec![group.clone()]),
                }));
            let ResponseBodyT::DescribeGroupsResponse(described) =
                client.group_call(&group, request).await.map_err(|e| e.to_string())?
            else {
                return Err("unexpected response".into());
            };
            let described =
                described.groups.into_iter().flatten().next().ok_or("no group in the response")?;
            let members = described.members.unwrap_or_default();
            println!(
                "group {group}\tstate {}\tprotocol {}\tmembers {}",
                described.state.unwrap_or_default(),
                described.protocol.unwrap_or_else(|| "-".into()),
                members.len()
            );
            let mut owner = std::collections::BTreeMap::new();
            for member in &members {
                let id = member.member_id.clone().unwrap_or_default();
                let assignment =
                    String::from_utf8_lossy(member.assignment.as_deref().unwrap_or_default())
                        .into_owned();
                println!("member {id}\t{assignment}");
                for item in assignment.split(',').filter(|s| !s.is_empty()) {
                    owner.insert(item.to_string(), id.clone());
                }
            }
            let committed = client.group_offsets(&group).await.map_err(|e| e.to_string())?;
            let mut rows: std::collections::BTreeMap<(String, u32), Option<i64>> =
                committed.into_iter().map(|(t, p, o)| ((t, p), Some(o))).collect();
            for item in owner.keys() {
                if let Some((topic, partition)) =
                    item.rsplit_once(':').and_then(|(t, p)| Some((t.to_string(), p.parse().ok()?)))
                {
                    rows.entry((topic, partition)).or_insert(None);
                }
            }
            println!("TOPIC\tPARTITION\tCOMMITTED\tLOG-END\tLAG\tOWNER");
            for ((topic, partition), committed) in rows {
                let end = client
                    .list_offset(&topic, partition, spate_client::LATEST)
                    .await
                    .map_err(|e| e.to_string())?
                    .unwrap_or(0);
                let owner = owner
                    .get(&format!("{topic}:{partition}"))
                    .cloned()
                    .unwrap_or_else(|| "-".into());
                match committed {
                    Some(offset) => println!(
                        "{topic}\t{partition}\t{offset}\t{end}\t{}\t{owner}",
                        (end - offset).max(0)
                    ),
                    None => println!("{topic}\t{partition}\t-\t{end}\t-\t{owner}"),
                }
            }
        }
        GroupCommand::Delete { group } => {
            let request = RequestBodyT::DeleteGroupsRequest(Box::new(wire::DeleteGroupsRequestT {
                groups: Some(vec![group.clone()]),
            }));
            let ResponseBodyT::DeleteGroupsResponse(response) =
                client.group_call(&group, request).await.map_err(|e| e.to_string())?
            else {
                return Err("unexpected response".into());
            };
            let result =
                response.groups.into_iter().flatten().next().ok_or("no result in the response")?;
            match result.error_code {
                wire::ErrorCode::None => println!("deleted group {group}"),
                wire::ErrorCode::NonEmptyGroup => {
                    return Err(format!(
                        "cannot delete group {group:?}: it has active members; stop them first"
                    ))
                }
                code => {
                    return Err(format!(
                        "cannot delete group {group:?}: {:?} {}",
                        code,
                        result.error_message.unwrap_or_default()
                    ))
                }
            }
        }
        GroupCommand::ResetOffsets { group, topic, to } => {
            let partitions = client
                .partitions(&topic)
                .await
                .map_err(|e| format!("cannot reset offsets of {topic:?}: {e}"))?;
            let mut offsets = Vec::new();
            for partition in partitions {
                let target = match parse_seek(&to, "--to")? {
                    Seek::Earliest => spate_client::EARLIEST,
                    Seek::Latest => spate_client::LATEST,
                    Seek::Timestamp(timestamp_ms) => timestamp_ms,
                    Seek::Offset(offset) => {
                        offsets.push((topic.clone(), partition.partition, offset));
                        continue;
                    }
                };
                let offset = match client
                    .list_offset(&topic, partition.partition, target)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Some(offset) => offset,
                    None => client
                        .list_offset(&topic, partition.partition, spate_client::LATEST)
                        .await
                        .map_err(|e| e.to_string())?
                        .unwrap_or(0),
                };
                offsets.push((topic.clone(), partition.partition, offset));
            }
            // Generation -1 outside membership: the coordinator refuses it while members exist.
            client.commit_offsets(&group, -1, "", &offsets).await.map_err(|e| match e.code() {
                Some(wire::ErrorCode::RebalanceInProgress) => format!("cannot reset offsets of group {group:?}: it has active members; stop them first"),
                _ => format!("cannot reset offsets of group {group:?}: {e}"),
            })?;
            for (topic, partition, offset) in offsets {
                println!("{topic}\t{partition}\t{offset}");
            }
        }
    }
    Ok(())
}
