//! Printing: aligned columns for people, proto3 JSON for programs.

use std::io::Write;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use super::{CliError, Output};

/// Where and how a subcommand prints.
pub struct Out {
    /// The format asked for.
    pub format: Output,
}

fn pool() -> Result<&'static DescriptorPool, CliError> {
    crate::pb::descriptor_pool().map_err(CliError::Local)
}

/// `message` (of the proto type `name`, e.g. `backchannel.v1.Party`) in the
/// proto3 JSON mapping, as grpcurl prints it: camelCase names, enums by
/// name, 64-bit integers and timestamps as strings, defaults left out.
pub fn json<M: prost::Message>(message: &M, name: &str) -> Result<String, CliError> {
    let desc = pool()?
        .get_message_by_name(name)
        .ok_or_else(|| CliError::Local(format!("no message type {name}")))?;
    let dynamic = DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
        .map_err(|e| CliError::Local(format!("{name} does not decode: {e}")))?;
    let mut out = serde_json::Serializer::new(Vec::new());
    dynamic
        .serialize_with_options(&mut out, &SerializeOptions::new())
        .map_err(|e| CliError::Local(format!("{name} as JSON: {e}")))?;
    String::from_utf8(out.into_inner()).map_err(|e| CliError::Local(e.to_string()))
}

impl Out {
    /// For the format asked for.
    pub fn new(format: Output) -> Out {
        Out { format }
    }

    /// Whether a machine format (JSON, ids) is asked for.
    pub fn is_json(&self) -> bool {
        self.format != Output::Table
    }

    /// Prints one record in the machine format asked for (its JSON, or
    /// `id`); false when a table is asked for, which the caller prints.
    pub fn machine<M: prost::Message>(
        &self,
        message: &M,
        name: &str,
        id: &str,
    ) -> Result<bool, CliError> {
        match self.format {
            Output::Table => Ok(false),
            Output::Json => self.json(message, name).map(|()| true),
            Output::Id => line(id).map(|()| true),
        }
    }

    /// Prints one record as a JSON line.
    pub fn json<M: prost::Message>(&self, message: &M, name: &str) -> Result<(), CliError> {
        line(&json(message, name)?)
    }
}

/// Prints a line and flushes it (so a pipe sees each line as it comes);
/// a closed stdout (`| head`) ends the command quietly.
pub fn line(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(CliError::Local(format!(
            "cannot write to standard output: {e}"
        ))),
    }
}

/// Rows printed as aligned columns under a header; the last column is not
/// padded.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(titles: &[&str]) -> Table {
        Table {
            rows: vec![titles.iter().map(|t| (*t).to_owned()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table, or `empty` when it has no rows.
    pub fn print(&self, empty: &str) -> Result<(), CliError> {
        if self.rows.len() == 1 {
            return line(empty);
        }
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut text = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    text.push_str(cell);
                } else {
                    let pad = widths[c].saturating_sub(cell.chars().count());
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad + 2));
                }
            }
            line(text.trim_end())?;
        }
        Ok(())
    }
}
