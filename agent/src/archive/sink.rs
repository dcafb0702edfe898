//! The partitioned Parquet writer shared by export and the live archive:
//! rows of one table go in, whole files come out.
//!
//! Rows (as SQLite gives them: node, rowid, then the table's columns) are
//! routed to one open file per partition (node, and UTC hour for hourly
//! tables), each with its own Arrow builders. Nothing becomes visible until
//! the [`Pending`] of [`Sink::finish`] is committed: files are written under hidden temporary names,
//! closed, synced, and only then renamed, all together; dropping a sink
//! without committing removes its temporary files.
//!
//! Bounds: at most [`MAX_OPEN_FILES`] files open at once (the least
//! recently written is closed; its partition gets a new file if more rows
//! come); at most [`BATCH_ROWS`] rows buffered per file and
//! [`MAX_BUFFERED_ROWS`] in all before they are encoded; row groups end at
//! [`ROW_GROUP_ROWS`] rows, or earlier when the encoders of all open files
//! together hold more than [`MEMORY_BUDGET`] bytes. A row whose values do
//! not fit the column types (text in an integer column, a NULL in a
//! required column, a pid past 32 bits) is skipped and counted.
//!
//! File names are deterministic: `{stem}-{k}.parquet`, `k` counting the
//! files of one partition in the order they were opened, so writing the
//! same rows again (a window redone after a crash) produces the same names.

use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    io::BufWriter,
    path::PathBuf,
    sync::Arc,
};

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{
        Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder, TimestampNanosecondBuilder,
    },
};
use arrow_schema::SchemaRef;
use parquet::{
    arrow::ArrowWriter,
    basic::{Compression, Encoding},
    file::{metadata::KeyValue, properties::WriterProperties},
    schema::types::ColumnPath,
};
use rusqlite::types::ValueRef;

mod pending;

pub use pending::Pending;

use super::{
    ArchiveError, HOUR_NS, escape_partition, hour_partition,
    tables::{Kind, Layout, TableSpec},
};

/// Rows per row group at most.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Rows buffered in one file's builders before they are encoded.
pub const BATCH_ROWS: usize = 8192;
/// Rows buffered in all files' builders before every buffer is encoded.
pub const MAX_BUFFERED_ROWS: usize = 64 * 1024;
/// Bytes the encoders of all open files may hold before the largest row
/// group in progress is flushed early.
pub const MEMORY_BUDGET: usize = 64 << 20;
/// Files open at once at most.
pub const MAX_OPEN_FILES: usize = 64;
/// Session ids listed in a file's metadata at most.
const MAX_LISTED_SESSIONS: usize = 256;

/// A partition: the node, and the hour for hourly tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PartKey {
    node: String,
    hour: Option<i64>,
}

/// One column's builder.
enum Builder {
    Text(StringBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F64(Float64Builder),
    Ts(TimestampNanosecondBuilder),
}

impl Builder {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Text => Self::Text(StringBuilder::new()),
            Kind::I16 => Self::I16(Int16Builder::new()),
            Kind::I32 => Self::I32(Int32Builder::new()),
            Kind::I64 => Self::I64(Int64Builder::new()),
            Kind::F64 => Self::F64(Float64Builder::new()),
            Kind::TimestampNs => Self::Ts(TimestampNanosecondBuilder::new().with_timezone("UTC")),
        }
    }

    /// Appends a value [`fits`] accepted.
    fn push(&mut self, v: ValueRef<'_>) {
        let int = match v {
            ValueRef::Integer(i) => Some(i),
            _ => None,
        };
        match self {
            Self::Text(b) => match v {
                ValueRef::Text(t) => b.append_value(String::from_utf8_lossy(t)),
                ValueRef::Integer(i) => b.append_value(i.to_string()),
                ValueRef::Real(f) => b.append_value(f.to_string()),
                _ => b.append_null(),
            },
            Self::I16(b) => b.append_option(int.map(|i| i as i16)),
            Self::I32(b) => b.append_option(int.map(|i| i as i32)),
            Self::I64(b) => b.append_option(int),
            Self::Ts(b) => b.append_option(int),
            Self::F64(b) => b.append_option(match v {
                ValueRef::Real(f) => Some(f),
                ValueRef::Integer(i) => Some(i as f64),
                _ => None,
            }),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Text(b) => Arc::new(b.finish()),
            Self::I16(b) => Arc::new(b.finish()),
            Self::I32(b) => Arc::new(b.finish()),
            Self::I64(b) => Arc::new(b.finish()),
            Self::F64(b) => Arc::new(b.finish()),
            Self::Ts(b) => Arc::new(b.finish()),
        }
    }
}

/// Whether a SQLite value can be stored in a column of `kind`.
fn fits(kind: Kind, required: bool, v: ValueRef<'_>) -> bool {
    match (kind, v) {
        (_, ValueRef::Null) => !required,
        (_, ValueRef::Blob(_)) => false,
        (Kind::Text, _) => true,
        (Kind::F64, ValueRef::Integer(_) | ValueRef::Real(_)) => true,
        (Kind::I16, ValueRef::Integer(i)) => i16::try_from(i).is_ok(),
        (Kind::I32, ValueRef::Integer(i)) => i32::try_from(i).is_ok(),
        (Kind::I64 | Kind::TimestampNs, ValueRef::Integer(_)) => true,
        _ => false,
    }
}

/// A file being written.
struct OpenFile {
    writer: ArrowWriter<BufWriter<File>>,
    builders: Vec<Builder>,
    buffered: usize,
    written: Written,
    last_used: u64,
}

/// A file written, before or after it was renamed into place.
#[derive(Debug, Clone)]
pub struct Written {
    /// Its hidden temporary path.
    pub tmp: PathBuf,
    /// Where it goes when committed.
    pub path: PathBuf,
    /// The node of its partition.
    pub node: String,
    /// Rows in it.
    pub rows: u64,
    /// Lowest and highest source rowid.
    pub rowids: (i64, i64),
    /// The ids (`events.id`) at those rowids, for events.
    pub ids: (String, String),
    /// Session ids of its rows.
    pub sessions: BTreeSet<i64>,
    /// Bytes on disk, once closed.
    pub bytes: u64,
}

/// What a sink wrote, once committed.
#[derive(Debug, Clone, Default)]
pub struct SinkReport {
    /// Rows written.
    pub rows: u64,
    /// Rows skipped because a value does not fit its column.
    pub skipped: u64,
    /// Files written.
    pub files: Vec<Written>,
}

/// Where and how a sink names its files.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// The archive's root directory.
    pub dir: PathBuf,
    /// File name stem, without the per-partition counter: `part-{token}`
    /// or `part-{token}-w{first rowid}`.
    pub stem: String,
    /// `ingero.archive_id`: the token naming this database's (or this
    /// export's) files.
    pub token: String,
    /// `ingero.window`: what the files are a window of.
    pub window: String,
}

/// The partitioned writer of one table.
pub struct Sink {
    spec: TableSpec,
    schema: SchemaRef,
    props: WriterProperties,
    opts: SinkOptions,
    ts_col: Option<usize>,
    session_col: Option<usize>,
    id_col: Option<usize>,
    open: HashMap<PartKey, OpenFile>,
    opened: HashMap<PartKey, u32>,
    closed: Vec<Written>,
    tick: u64,
    buffered: usize,
    report: SinkReport,
    /// The node of the last row, to route the next without allocating.
    last: Option<PartKey>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("table", &self.spec.name)
            .field("open", &self.open.len())
            .field("closed", &self.closed.len())
            .finish_non_exhaustive()
    }
}

impl Sink {
    /// A sink for `spec`'s rows.
    #[must_use]
    pub fn new(spec: TableSpec, opts: SinkOptions) -> Self {
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("ingero {}", env!("CARGO_PKG_VERSION")));
        // The two columns that are unique per row and take most of the
        // space: event ids share their node prefix and count up,
        // timestamps grow by small steps. Delta encodings halve the files
        // (dictionaries cannot help them); every engine here reads both.
        for (col, encoding) in [
            ("id", Encoding::DELTA_BYTE_ARRAY),
            ("timestamp", Encoding::DELTA_BINARY_PACKED),
        ] {
            if spec.layout == Layout::Hourly && spec.position(col).is_some() {
                let path = ColumnPath::from(col);
                props = props
                    .set_column_dictionary_enabled(path.clone(), false)
                    .set_column_encoding(path, encoding);
            }
        }
        let props = props.build();
        Self {
            schema: spec.schema(),
            ts_col: (spec.layout == Layout::Hourly)
                .then(|| spec.position("timestamp"))
                .flatten(),
            session_col: spec.session_col.and_then(|c| spec.position(c)),
            id_col: (spec.name == "events").then(|| spec.position("id")).flatten(),
            spec,
            props,
            opts,
            open: HashMap::new(),
            opened: HashMap::new(),
            closed: Vec::new(),
            tick: 0,
            buffered: 0,
            report: SinkReport::default(),
            last: None,
        }
    }

    /// Rows taken so far (written or buffered).
    #[must_use]
    pub fn rows(&self) -> u64 {
        self.report.rows
    }

    /// Takes one row: `node, rowid, cols...` (see [`TableSpec::select`]),
    /// with `node` already replaced by `node` when given (the copies of
    /// the catalogs).
    pub fn push(&mut self, row: &rusqlite::Row<'_>, node: Option<&str>) -> Result<(), ArchiveError> {
        for (i, c) in self.spec.cols.iter().enumerate() {
            if !fits(c.kind, c.required, row.get_ref(i + 2)?) {
                self.report.skipped += 1;
                return Ok(());
            }
        }
        let hour = match self.ts_col {
            Some(i) => match row.get_ref(i + 2)? {
                ValueRef::Integer(ts) => Some(ts.div_euclid(HOUR_NS)),
                _ => None,
            },
            None => None,
        };
        let node_ref = match node {
            Some(n) => n.as_bytes(),
            None => match row.get_ref(0)? {
                ValueRef::Text(t) if !t.is_empty() => t,
                _ => {
                    return Err(ArchiveError::Refused(format!(
                        "{} has rows without a node name (a database of another tracer?): pass --force-node NAME",
                        self.spec.name
                    )));
                }
            },
        };
        let key = match self.last.take() {
            Some(k) if k.hour == hour && k.node.as_bytes() == node_ref => k,
            _ => PartKey {
                node: String::from_utf8_lossy(node_ref).into_owned(),
                hour,
            },
        };
        self.tick += 1;
        let tick = self.tick;
        if !self.open.contains_key(&key) {
            self.open_file(&key)?;
        }
        let rowid: i64 = row.get(1)?;
        let session = self.session_col.and_then(|i| match row.get_ref(i + 2) {
            Ok(ValueRef::Integer(s)) => Some(s),
            _ => None,
        });
        let Some(file) = self.open.get_mut(&key) else {
            return Ok(());
        };
        file.last_used = tick;
        for (i, b) in file.builders.iter_mut().enumerate() {
            b.push(row.get_ref(i + 2)?);
        }
        let w = &mut file.written;
        if w.rows == 0 || rowid < w.rowids.0 {
            w.rowids.0 = rowid;
            if let Some(i) = self.id_col {
                w.ids.0 = row.get(i + 2)?;
            }
        }
        if w.rows == 0 || rowid > w.rowids.1 {
            w.rowids.1 = rowid;
            if let Some(i) = self.id_col
                && let ValueRef::Text(t) = row.get_ref(i + 2)?
            {
                w.ids.1.clear();
                w.ids.1.push_str(&String::from_utf8_lossy(t));
            }
        }
        w.rows += 1;
        if let Some(s) = session
            && w.sessions.len() < MAX_LISTED_SESSIONS
        {
            w.sessions.insert(s);
        }
        file.buffered += 1;
        self.buffered += 1;
        self.report.rows += 1;
        if file.buffered >= BATCH_ROWS {
            self.encode(&key)?;
        }
        if self.buffered >= MAX_BUFFERED_ROWS {
            let keys: Vec<PartKey> = self.open.keys().cloned().collect();
            for k in keys {
                self.encode(&k)?;
            }
        }
        self.last = Some(key);
        Ok(())
    }

    /// The directory of a partition.
    fn partition_dir(&self, key: &PartKey) -> PathBuf {
        let mut dir = self
            .opts
            .dir
            .join(format!("table={}", self.spec.name))
            .join(format!("node={}", escape_partition(&key.node)));
        if let Some(h) = key.hour {
            dir = dir.join(hour_partition(h));
        }
        dir
    }

    fn open_file(&mut self, key: &PartKey) -> Result<(), ArchiveError> {
        if self.open.len() >= MAX_OPEN_FILES
            && let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, f)| f.last_used)
                .map(|(k, _)| k.clone())
        {
            self.close(&oldest)?;
        }
        let dir = self.partition_dir(key);
        std::fs::create_dir_all(&dir).map_err(|e| ArchiveError::write(&dir, e))?;
        let k = self.opened.entry(key.clone()).or_insert(0);
        let name = format!("{}-{k}.parquet", self.opts.stem);
        *k += 1;
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = File::create(&tmp).map_err(|e| ArchiveError::write(&tmp, e))?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            Arc::clone(&self.schema),
            Some(self.props.clone()),
        )
        .map_err(|e| ArchiveError::write(&tmp, e))?;
        self.open.insert(
            key.clone(),
            OpenFile {
                writer,
                builders: self.spec.cols.iter().map(|c| Builder::new(c.kind)).collect(),
                buffered: 0,
                written: Written {
                    tmp,
                    path,
                    node: key.node.clone(),
                    rows: 0,
                    rowids: (0, 0),
                    ids: (String::new(), String::new()),
                    sessions: BTreeSet::new(),
                    bytes: 0,
                },
                last_used: self.tick,
            },
        );
        Ok(())
    }

    /// Encodes a file's buffered rows, and keeps the encoders of all open
    /// files under the memory budget.
    fn encode(&mut self, key: &PartKey) -> Result<(), ArchiveError> {
        let Some(file) = self.open.get_mut(key) else {
            return Ok(());
        };
        if file.buffered == 0 {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = file.builders.iter_mut().map(Builder::finish).collect();
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| ArchiveError::write(&file.written.tmp, e))?;
        file.writer
            .write(&batch)
            .map_err(|e| ArchiveError::write(&file.written.tmp, e))?;
        self.buffered -= file.buffered;
        file.buffered = 0;
        let held: usize = self.open.values().map(|f| f.writer.memory_size()).sum();
        if held > MEMORY_BUDGET
            && let Some(largest) = self.open.values_mut().max_by_key(|f| f.writer.memory_size())
        {
            largest
                .writer
                .flush()
                .map_err(|e| ArchiveError::write(&largest.written.tmp, e))?;
        }
        Ok(())
    }

    /// Finishes a file: its last rows, its metadata, its footer, synced.
    /// On a failure its temporary file is removed.
    fn close(&mut self, key: &PartKey) -> Result<(), ArchiveError> {
        if let Err(e) = self.encode(key) {
            if let Some(f) = self.open.remove(key) {
                let tmp = f.written.tmp.clone();
                drop(f);
                let _ = std::fs::remove_file(tmp);
            }
            return Err(e);
        }
        let Some(mut file) = self.open.remove(key) else {
            return Ok(());
        };
        let w = &mut file.written;
        let sessions = w
            .sessions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut meta = vec![
            ("ingero.table", self.spec.name.to_owned()),
            ("ingero.node", w.node.clone()),
            ("ingero.rows", w.rows.to_string()),
            ("ingero.session_ids", sessions),
            ("ingero.rowid_first", w.rowids.0.to_string()),
            ("ingero.rowid_last", w.rowids.1.to_string()),
            ("ingero.window", self.opts.window.clone()),
            ("ingero.archive_id", self.opts.token.clone()),
            (
                "ingero.schema_version",
                crate::store::schema::SCHEMA_VERSION.to_owned(),
            ),
        ];
        if self.id_col.is_some() {
            meta.push(("ingero.event_id_first", w.ids.0.clone()));
            meta.push(("ingero.event_id_last", w.ids.1.clone()));
        }
        for (k, v) in meta {
            file.writer
                .append_key_value_metadata(KeyValue::new(k.to_owned(), v));
        }
        let tmp = file.written.tmp.clone();
        let finished = file
            .writer
            .into_inner()
            .map_err(|e| ArchiveError::write(&tmp, e))
            .and_then(|out| out.into_inner().map_err(|e| ArchiveError::write(&tmp, e.error())))
            .and_then(|out| {
                out.sync_all().map_err(|e| ArchiveError::write(&tmp, e))?;
                Ok(out.metadata().map_or(0, |m| m.len()))
            });
        match finished {
            Ok(bytes) => {
                file.written.bytes = bytes;
                self.closed.push(file.written);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Closes every file (synced, still under its temporary name) and
    /// hands them over with what was written.
    pub fn finish(mut self) -> Result<(Pending, SinkReport), ArchiveError> {
        let mut keys: Vec<PartKey> = self.open.keys().cloned().collect();
        keys.sort();
        for k in keys {
            self.close(&k)?;
        }
        let mut report = std::mem::take(&mut self.report);
        report.files.clone_from(&self.closed);
        let pending = Pending {
            root: self.opts.dir.clone(),
            files: std::mem::take(&mut self.closed),
        };
        Ok((pending, report))
    }
}

impl Drop for Sink {
    /// A sink dropped before [`Sink::finish`] (an error) leaves no
    /// temporary file behind.
    fn drop(&mut self) {
        for (_, f) in self.open.drain() {
            let tmp = f.written.tmp.clone();
            drop(f);
            let _ = std::fs::remove_file(tmp);
        }
        for w in self.closed.drain(..) {
            let _ = std::fs::remove_file(&w.tmp);
        }
    }
}

#[cfg(test)]
mod tests;
