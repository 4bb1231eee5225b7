//! COPY text, row by row: what pg_dump writes as a table's data, and what
//! `COPY … TO STDOUT` gives back from a restored table. [`RowHasher`]
//! counts the rows and sums each row's hash, so that a dump and a restored
//! table compare without sorting either; [`copy_columns`] and
//! [`split_columns`] read the column list of pg_dump's COPY statement, so
//! that a restored table is read back in the dump's column order.

/// The column names of a column list as [`copy_columns`] gives it
/// (`a, "B c", "x""y"`), unquoted; `None` if it is not such a list.
pub fn split_columns(list: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        let (name, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let mut name = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') if quoted[i + 1..].starts_with('"') => {
                        name.push('"');
                        chars.next();
                    }
                    (i, '"') => break i + 1,
                    (_, c) => name.push(c),
                }
            };
            (name, &quoted[end..])
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let name = rest[..end].trim();
            let plain = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
            if !plain {
                return None;
            }
            (name.to_string(), &rest[end..])
        };
        names.push(name);
        rest = after.trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if rest.is_empty() => {}
            None => return None,
        }
    }
    Some(names)
}

/// The column list of a COPY statement as pg_dump writes it,
/// `COPY schema.table (a, "B c") FROM stdin;`: the text between the first
/// parenthesis outside double quotes and its match. A table without columns
/// has an empty list.
pub fn copy_columns(statement: &str) -> Option<String> {
    let mut quoted = false;
    let mut start = None;
    for (i, c) in statement.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted && start.is_none() => start = Some(i + 1),
            ')' if !quoted => return start.map(|s| statement[s..i].to_string()),
            _ => {}
        }
    }
    statement
        .trim_end()
        .ends_with("FROM stdin;")
        .then(String::new)
}

/// Counts the rows of COPY text (one row a line) and sums each row's
/// XXH3-128, so the sum does not depend on the rows' order. The same
/// hasher reads a dump's data at backup and `COPY … TO STDOUT` from a
/// restored table, so both sides hash the same bytes.
#[derive(Debug, Default)]
pub struct RowHasher {
    /// A row split across two `update` calls.
    carry: Vec<u8>,
    rows: i64,
    sum: u128,
    /// The end-of-data marker was read.
    ended: bool,
}

impl RowHasher {
    pub fn update(&mut self, mut data: &[u8]) {
        while let Some(i) = memchr::memchr(b'\n', data) {
            if self.carry.is_empty() {
                self.row(&data[..i]);
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(&data[..i]);
                self.row(&line);
                line.clear();
                self.carry = line;
            }
            data = &data[i + 1..];
        }
        self.carry.extend_from_slice(data);
    }

    fn row(&mut self, line: &[u8]) {
        // pg_dump ends a table's data with `\.` and blank lines; no row can
        // be `\.` (a backslash in a value is written `\\`).
        if line == b"\\." {
            self.ended = true;
        }
        if !self.ended {
            self.rows += 1;
            self.sum = self.sum.wrapping_add(xxhash_rust::xxh3::xxh3_128(line));
        }
    }

    /// Row count and checksum (a last row without its newline counts).
    pub fn finish(mut self) -> (i64, u128) {
        if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            self.row(&line);
        }
        (self.rows, self.sum)
    }
}

/// The checksum as recorded: 32 hex digits.
pub fn sum_hex(sum: u128) -> String {
    format!("{sum:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xxh(line: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(line.as_bytes())
    }

    #[test]
    fn row_sums_ignore_order_and_how_the_text_is_split() {
        let mut a = RowHasher::default();
        a.update(b"x\t1\ny\t2\ny\t2\n");
        let mut b = RowHasher::default();
        for piece in [&b"y\t"[..], b"2\ny", b"\t2", b"\nx\t1\n"] {
            b.update(piece);
        }
        let (ra, sa) = a.finish();
        assert_eq!((ra, sa), b.finish());
        // Duplicates count: a repeated row does not cancel out.
        assert_eq!(ra, 3);
        assert_eq!(
            sa,
            xxh("x\t1")
                .wrapping_add(xxh("y\t2"))
                .wrapping_add(xxh("y\t2"))
        );
        let mut c = RowHasher::default();
        c.update(b"x\t1\ny\t2\n");
        assert_ne!(c.finish().1, sa);
    }

    #[test]
    fn the_column_list_is_read_from_pg_dumps_copy_statement() {
        assert_eq!(
            copy_columns("COPY public.t (a, \"b (x)\", c) FROM stdin;\n").as_deref(),
            Some("a, \"b (x)\", c")
        );
        assert_eq!(
            copy_columns("COPY \"we(ird\".\"t)\" (x) FROM stdin;\n").as_deref(),
            Some("x")
        );
        assert_eq!(
            copy_columns("COPY public.empty  FROM stdin;\n").as_deref(),
            Some("")
        );
        assert_eq!(copy_columns("SELECT 1"), None);
    }

    #[test]
    fn column_lists_split_into_names() {
        assert_eq!(
            split_columns("a, \"B c\", \"x\"\"y\", d_1").unwrap(),
            ["a", "B c", "x\"y", "d_1"]
        );
        assert_eq!(split_columns("").unwrap(), Vec::<String>::new());
        assert_eq!(split_columns("a) TO PROGRAM 'x' --"), None);
        assert_eq!(split_columns("\"open"), None);
    }
}
