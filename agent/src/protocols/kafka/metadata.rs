//! Topic ids (KIP-516): Fetch v13+ and Produce v13+ name topics only by a 128-bit id,
//! and only Metadata responses (v10+) say which name an id stands for.

use std::collections::HashMap;

use super::{error, Cur, Wire, W};
use crate::protocols::L7Event;

/// Topic ids remembered (agent-wide).
const MAX_TOPIC_IDS: usize = 4096;

/// Topic names by topic id, learned from Metadata responses (v10+). Fetch v13+ and
/// Produce v13+ name topics only by id, and a client often asks for metadata on another
/// connection than the one it fetches on (librdkafka's bootstrap connection), so the map
/// is shared by every Kafka connection of the agent. Ids are random 128-bit UUIDs, so
/// clusters do not collide; bounded by clearing when full.
static TOPIC_IDS: std::sync::LazyLock<std::sync::Mutex<HashMap<[u8; 16], String>>> =
    std::sync::LazyLock::new(Default::default);

fn remember_topic_id(id: [u8; 16], name: String) {
    let mut ids = TOPIC_IDS.lock().unwrap_or_else(|e| e.into_inner());
    if ids.len() >= MAX_TOPIC_IDS && !ids.contains_key(&id) {
        ids.clear();
    }
    ids.insert(id, name);
}

fn topic_by_id(id: [u8; 16]) -> Option<String> {
    TOPIC_IDS.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
}

/// A topic field: its name, or from v`ids_from` on a topic id (KIP-516) resolved
/// through [`TOPIC_IDS`]; an id never seen in metadata is reported as its hex form.
pub(super) fn topic_name(c: &mut Cur<'_>, version: i16, flexible: bool, ids_from: i16) -> W<(String, bool)> {
    if version >= ids_from {
        let id: [u8; 16] = c.arr()?;
        Ok(match topic_by_id(id) {
            Some(name) => (name, true),
            None => (id.iter().map(|b| format!("{b:02x}")).collect(), false),
        })
    } else {
        Ok((String::from_utf8_lossy(c.string(flexible)?.unwrap_or_default()).into_owned(), true))
    }
}

/// A Metadata response: teaches the topic ids it names, reports nothing else.
pub(super) fn on_response(c: &mut Cur<'_>, version: i16, out: &mut Vec<L7Event>) {
    let parsed = (|| -> W<()> {
        if version >= 9 {
            c.tagged_fields()?;
        }
        parse_metadata_response(c, version)
    })();
    // Only the topic ids matter here; a metadata response cut short by the
    // capture still taught the ids before the cut.
    if let Err(Wire::Malformed(why)) = parsed {
        out.push(error(why));
    }
}

/// Metadata response: only the topic name ↔ id pairs (v10+) are kept.
fn parse_metadata_response(c: &mut Cur<'_>, v: i16) -> W<()> {
    let flexible = v >= 9;
    if v >= 3 {
        c.i32()?; // throttle time
    }
    skip_brokers(c, v, flexible)?;
    if v >= 2 {
        c.string(flexible)?; // cluster id
    }
    if v >= 1 {
        c.i32()?; // controller id
    }
    for _ in 0..c.array_len(flexible)? {
        c.i16()?; // error code
        let name = c.string(flexible)?.map(|n| String::from_utf8_lossy(n).into_owned());
        if v >= 10 {
            let id: [u8; 16] = c.arr()?;
            if let Some(name) = name.filter(|_| id != [0; 16]) {
                remember_topic_id(id, name);
            }
        }
        if v >= 1 {
            c.i8()?; // is internal
        }
        skip_partitions(c, v, flexible)?;
        if v >= 8 {
            c.i32()?; // topic authorized operations
        }
        if flexible {
            c.tagged_fields()?;
        }
    }
    Ok(())
}

fn skip_brokers(c: &mut Cur<'_>, v: i16, flexible: bool) -> W<()> {
    for _ in 0..c.array_len(flexible)? {
        c.i32()?; // node id
        c.string(flexible)?; // host
        c.i32()?; // port
        if v >= 1 {
            c.string(flexible)?; // rack
        }
        if flexible {
            c.tagged_fields()?;
        }
    }
    Ok(())
}

fn skip_partitions(c: &mut Cur<'_>, v: i16, flexible: bool) -> W<()> {
    for _ in 0..c.array_len(flexible)? {
        c.i16()?; // error code
        c.i32()?; // partition index
        c.i32()?; // leader id
        if v >= 7 {
            c.i32()?; // leader epoch
        }
        let node_lists = if v >= 5 { 3 } else { 2 };
        for _ in 0..node_lists {
            let n = c.array_len(flexible)?;
            c.take(n.checked_mul(4).ok_or(Wire::Malformed("invalid_length"))?)?;
        }
        if flexible {
            c.tagged_fields()?;
        }
    }
    Ok(())
}
