//! Several encoded commands in one queue message: the API publishes the creates waiting at the same time
//! together (one broker message, one confirm, one acknowledgement for all), the worker opens them again.
//!
//! The format, version 1: a line `chatsys.envelope.v1 <count>`, then each command as a line holding its
//! length in bytes, followed by exactly that many bytes of the command's own encoding
//! ([`Command::encode`](crate::command::Command::encode)). A message that does not start with the
//! marker is one command, as every message was before envelopes: those still queued during an upgrade,
//! and a lone command, which is published as itself.

use crate::command::MAX_COMMAND_BYTES;
use crate::domain::AppId;

const MARKER: &[u8] = b"chatsys.envelope.v1 ";

/// Commands in one envelope at most.
pub const MAX_COMMANDS: usize = 64;

/// An envelope is never larger than the largest single command, so every bound the worker keeps in
/// bytes of deliveries (its prefetch, its batches) holds as it did with one command per message.
pub const MAX_BYTES: usize = MAX_COMMAND_BYTES;

/// What a command adds to an envelope besides its own bytes: its length line, at most.
pub const PART_OVERHEAD: usize = 8;

/// The envelope's own header, at most.
const HEADER_BYTES: usize = MARKER.len() + 4;

/// The bytes of encoded commands one envelope takes at most, counting [`PART_OVERHEAD`] for each.
pub const PARTS_BYTES: usize = MAX_BYTES - HEADER_BYTES;

/// One message holding these encoded commands: a lone command is the command itself.
pub fn seal(parts: &[Vec<u8>]) -> Vec<u8> {
    if let [one] = parts {
        return one.clone();
    }
    let size = HEADER_BYTES + parts.iter().map(|p| p.len() + PART_OVERHEAD).sum::<usize>();
    let mut sealed = Vec::with_capacity(size);
    sealed.extend_from_slice(MARKER);
    sealed.extend_from_slice(parts.len().to_string().as_bytes());
    sealed.push(b'\n');
    for part in parts {
        sealed.extend_from_slice(part.len().to_string().as_bytes());
        sealed.push(b'\n');
        sealed.extend_from_slice(part);
    }
    sealed
}

/// The encoded commands a message holds, in order: one for a message that is not an envelope. An
/// envelope whose framing is broken is refused whole (nothing in it can be trusted to be a command);
/// each command in a well-framed one is then decoded, and refused, on its own.
pub fn open(payload: &[u8]) -> Result<Vec<&[u8]>, String> {
    let Some(rest) = payload.strip_prefix(MARKER) else {
        return Ok(vec![payload]);
    };
    let (count, mut rest) = number_line(rest).ok_or("an envelope without its count")?;
    if count == 0 || count > MAX_COMMANDS {
        return Err(format!("an envelope of {count} commands"));
    }
    let mut parts = Vec::with_capacity(count);
    for index in 0..count {
        let (length, after) =
            number_line(rest).ok_or_else(|| format!("command {index} has no length"))?;
        if length > after.len() {
            return Err(format!("command {index} is cut short"));
        }
        let (part, after) = after.split_at(length);
        parts.push(part);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last command", rest.len()));
    }
    Ok(parts)
}

/// How many commands a message holds, read from its header alone (one for a plain command, and for
/// a broken envelope, which is refused as one).
pub fn commands_in(payload: &[u8]) -> usize {
    payload
        .strip_prefix(MARKER)
        .and_then(number_line)
        .map_or(1, |(count, _)| count.clamp(1, MAX_COMMANDS))
}

/// The application of a message's first command; `None` when unreadable. The API fills an envelope
/// from whatever waits for one queue, so this only orders envelopes among themselves.
pub fn application_of(payload: &[u8]) -> Option<AppId> {
    let first = *open(payload).ok()?.first()?;
    crate::command::Command::application_of(first)
}

/// A decimal number and a line break; the rest after it.
fn number_line(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let end = bytes.iter().take(12).position(|b| *b == b'\n')?;
    let digits = std::str::from_utf8(&bytes[..end]).ok()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, &bytes[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    fn create(number: u64, body: &str) -> Vec<u8> {
        let at = "2026-12-04T00:00:00Z".parse().unwrap();
        Command::CreateMessage {
            application_id: 7,
            chat_number: 1,
            chat_created_at: at,
            number,
            body: body.into(),
            at,
        }
        .encode()
    }

    #[test]
    fn an_envelope_gives_back_its_commands_in_order() {
        // Bodies holding line breaks and digits: the lengths, not the content, frame them.
        let parts = vec![create(1, "one\n2\n"), create(2, "two"), create(3, "")];
        let sealed = seal(&parts);
        assert_eq!(commands_in(&sealed), 3);
        assert_eq!(application_of(&sealed), Some(7));
        let opened = open(&sealed).unwrap();
        assert_eq!(opened, parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert!(
            sealed.len()
                <= HEADER_BYTES + parts.iter().map(|p| p.len() + PART_OVERHEAD).sum::<usize>()
        );
    }

    #[test]
    fn a_lone_command_travels_as_itself_and_plain_commands_open_as_one() {
        let one = create(1, "alone");
        assert_eq!(seal(std::slice::from_ref(&one)), one);
        assert_eq!(open(&one).unwrap(), [one.as_slice()]);
        assert_eq!(commands_in(&one), 1);
        assert_eq!(application_of(&one), Some(7));
    }

    #[test]
    fn a_broken_envelope_is_refused_whole() {
        let sealed = seal(&[create(1, "a"), create(2, "b")]);
        let cut = &sealed[..sealed.len() - 1];
        assert!(open(cut).unwrap_err().contains("cut short"));
        let mut longer = sealed.clone();
        longer.push(b'x');
        assert!(
            open(&longer)
                .unwrap_err()
                .contains("after the last command")
        );
        assert!(open(b"chatsys.envelope.v1 0\n").is_err());
        assert!(open(b"chatsys.envelope.v1 65\n").is_err());
        assert!(open(b"chatsys.envelope.v1 x\n").is_err());
        assert!(
            open(b"chatsys.envelope.v1 2\n3\nabc")
                .unwrap_err()
                .contains("command 1")
        );
        assert_eq!(application_of(cut), None);
    }

    #[test]
    fn a_full_envelope_of_the_largest_parts_stays_within_its_bound() {
        let part = vec![b'x'; PARTS_BYTES / MAX_COMMANDS - PART_OVERHEAD];
        let sealed = seal(&vec![part; MAX_COMMANDS]);
        assert!(sealed.len() <= MAX_BYTES, "{} bytes", sealed.len());
        assert_eq!(open(&sealed).unwrap().len(), MAX_COMMANDS);
    }
}
