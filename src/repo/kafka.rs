//! What a Kafka snapshot stores (`spec/kafka.md`): the source metadata kept
//! in the snapshot manifest, and the binary record stream of one partition.

use serde::{Deserialize, Serialize};
use std::io::{self, Read};

/// Metadata of a Kafka source (the `metadata` of its [`super::SourceRecord`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct KafkaMeta {
    pub cluster_id: Option<String>,
    pub brokers: usize,
    /// Whether messages were stored (`--no-messages` stores only metadata).
    pub messages: bool,
    pub topics: Vec<TopicMeta>,
    pub groups: Vec<GroupMeta>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    pub replication_factor: usize,
    pub configs: Vec<ConfigEntry>,
    pub partitions: Vec<PartitionMeta>,
}

/// One topic configuration entry as DescribeConfigs reported it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfigEntry {
    pub name: String,
    /// `None` for sensitive entries (the broker does not reveal them).
    pub value: Option<String>,
    /// `dynamic-topic`, `dynamic-broker`, `dynamic-default-broker`,
    /// `static-broker`, `default` or `unknown`.
    pub source: String,
    pub is_default: bool,
    pub read_only: bool,
    pub sensitive: bool,
}

impl ConfigEntry {
    /// Set explicitly on the topic (what a restore re-applies by default).
    pub fn is_topic_override(&self) -> bool {
        self.source == "dynamic-topic" && !self.read_only && !self.sensitive
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PartitionMeta {
    pub id: i32,
    /// Log start offset (ListOffsets earliest) when the snapshot began.
    pub low: i64,
    /// High watermark (ListOffsets latest) when the snapshot began.
    pub high: i64,
    /// Offset the reading stopped before: the high watermark seen at the
    /// start, by ListOffsets or by the first Fetch response, whichever is higher.
    pub end: i64,
    /// Node holding the partition's records (absent with `--no-messages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub records: u64,
    pub bytes: u64,
    /// Unkeyed BLAKE3 of the record stream, hex.
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_offset: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupMeta {
    pub name: String,
    pub state: String,
    pub protocol_type: String,
    pub members: usize,
    pub offsets: Vec<GroupOffset>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
}

/// How a record's timestamp was set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    None = 0,
    CreateTime = 1,
    LogAppendTime = 2,
}

/// One Kafka record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub timestamp_type: TimestampType,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
}

/// Append one record to `out` in the stored format:
/// `u32 len | i64 offset | i64 timestamp | u8 type | bytes key | bytes value |
/// u32 n | n × (bytes name, bytes value)`, all little-endian, where `bytes` is
/// an `i32` length (-1 = null) followed by that many bytes and `len` counts
/// everything after itself.
pub fn encode_record(
    out: &mut Vec<u8>,
    offset: i64,
    timestamp: i64,
    ts_type: TimestampType,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
    out.push(ts_type as u8);
    put_bytes(out, key);
    put_bytes(out, value);
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, v) in headers {
        put_bytes(out, Some(name.as_bytes()));
        put_bytes(out, *v);
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Reads records back from a stored stream.
pub struct RecordReader<R> {
    inner: R,
    buf: Vec<u8>,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("record stream: {msg}"))
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("record is truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn i64(&mut self) -> io::Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> io::Result<i32> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> io::Result<Option<&'a [u8]>> {
        match self.i32()? {
            -1 => Ok(None),
            n if n < 0 => Err(bad("negative length")),
            n => Ok(Some(self.take(n as usize)?)),
        }
    }
}

impl<R: Read> RecordReader<R> {
    pub fn new(inner: R) -> Self {
        RecordReader {
            inner,
            buf: Vec::new(),
        }
    }

    /// The next record's raw bytes (without the length prefix), or `None` at the end.
    pub fn next_raw(&mut self) -> io::Result<Option<&[u8]>> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.inner.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(bad("stream ends inside a record length")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = u64::from(u32::from_le_bytes(len));
        // Read, not allocated up front: a damaged length must not ask for
        // 4 GiB before a byte of the record has arrived.
        self.buf.clear();
        let got = (&mut self.inner)
            .take(len)
            .read_to_end(&mut self.buf)
            .map_err(|_| bad("stream ends inside a record"))?;
        if (got as u64) < len {
            return Err(bad("stream ends inside a record"));
        }
        Ok(Some(&self.buf))
    }

    /// The next record, or `None` at the end of the stream.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        Ok(self.next_ref()?.map(|r| r.to_owned()))
    }

    /// The next record borrowed from the reader's buffer (no copies).
    pub fn next_ref(&mut self) -> io::Result<Option<RecordRef<'_>>> {
        let Some(raw) = self.next_raw()? else {
            return Ok(None);
        };
        decode_record_ref(raw).map(Some)
    }
}

/// A record borrowed from its stored bytes; see [`decode_record_ref`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub timestamp_type: TimestampType,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl RecordRef<'_> {
    pub fn to_owned(&self) -> Record {
        Record {
            offset: self.offset,
            timestamp: self.timestamp,
            timestamp_type: self.timestamp_type,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
                .collect(),
        }
    }
}

/// Decode one record from its raw bytes (as returned by [`RecordReader::next_raw`]).
pub fn decode_record(raw: &[u8]) -> io::Result<Record> {
    decode_record_ref(raw).map(|r| r.to_owned())
}

/// Decode one record, borrowing its key, value and headers from `raw`.
pub fn decode_record_ref(raw: &[u8]) -> io::Result<RecordRef<'_>> {
    let mut c = Cursor(raw);
    let offset = c.i64()?;
    let timestamp = c.i64()?;
    let timestamp_type = match c.take(1)?[0] {
        0 => TimestampType::None,
        1 => TimestampType::CreateTime,
        2 => TimestampType::LogAppendTime,
        _ => return Err(bad("unknown timestamp type")),
    };
    let key = c.bytes()?;
    let value = c.bytes()?;
    let n = c.i32()? as u32;
    let mut headers = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        let name = c.bytes()?.ok_or_else(|| bad("header without a name"))?;
        let name = std::str::from_utf8(name).map_err(|_| bad("header name is not UTF-8"))?;
        headers.push((name, c.bytes()?));
    }
    if !c.0.is_empty() {
        return Err(bad("trailing bytes after a record"));
    }
    Ok(RecordRef {
        offset,
        timestamp,
        timestamp_type,
        key,
        value,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(
            recs in proptest::collection::vec((
                any::<i64>(), any::<i64>(), 0u8..3,
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
                proptest::collection::vec(("[a-z]{0,8}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20))), 0..4),
            ), 0..20)
        ) {
            let mut buf = Vec::new();
            let mut want = Vec::new();
            for (off, ts, ty, key, value, headers) in &recs {
                let ty = [TimestampType::None, TimestampType::CreateTime, TimestampType::LogAppendTime][*ty as usize];
                let h: Vec<(&str, Option<&[u8]>)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_deref())).collect();
                encode_record(&mut buf, *off, *ts, ty, key.as_deref(), value.as_deref(), &h);
                want.push(Record { offset: *off, timestamp: *ts, timestamp_type: ty, key: key.clone(), value: value.clone(),
                    headers: headers.clone() });
            }
            let mut r = RecordReader::new(&buf[..]);
            let mut got = Vec::new();
            while let Some(rec) = r.next_record().unwrap() { got.push(rec); }
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            7,
            1,
            TimestampType::CreateTime,
            Some(b"k"),
            Some(b"v"),
            &[],
        );
        for cut in 1..buf.len() {
            let mut r = RecordReader::new(&buf[..cut]);
            assert!(r.next_record().is_err(), "cut at {cut}");
        }
    }
}
