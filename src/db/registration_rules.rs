//! Registration rules (`bootcast host rule`): what a new machine gets at its first hello.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{DbError, QueryContext};

/// One rule. Every condition given must hold (none given: every new machine); the rules are
/// tried in id order and the first that matches applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationRule {
    #[serde(default)]
    pub id: i64,
    /// The site of the relay the machine booted through.
    #[serde(default)]
    pub site: Option<String>,
    /// The machine's address is in this subnet (`10.99.0.0/24`).
    #[serde(default)]
    pub subnet: Option<String>,
    /// Glob patterns (`*`, `?`, case-insensitive) on SMBIOS model and serial.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    /// A glob pattern on the switch port it booted behind (DHCP option 82 circuit id, as the
    /// DHCP relay agent of its switch sends it).
    #[serde(default)]
    pub circuit: Option<String>,
    /// What it gets: a group (room), a name (`{n}`: the first free number, two digits;
    /// `{serial}`, `{mac}`), an image to be reimaged with.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    /// Wait for one staff approval (`bootcast host approve MAC`) before the image.
    #[serde(default)]
    pub approval: bool,
    /// Take the place of a host of the group marked broken (`bootcast host broken`).
    #[serde(default)]
    pub replace_broken: bool,
    /// What the machine does after its reimage.
    #[serde(default)]
    pub then: Option<crate::proto::agent::After>,
}

const COLUMNS: &str =
    "id, site, subnet, model, serial, grp, name_pattern, image, approval, replace_broken, after_task, circuit";

fn row(r: &rusqlite::Row) -> rusqlite::Result<RegistrationRule> {
    let then: Option<String> = r.get(10)?;
    Ok(RegistrationRule {
        id: r.get(0)?,
        site: r.get(1)?,
        subnet: r.get(2)?,
        model: r.get(3)?,
        serial: r.get(4)?,
        group: r.get(5)?,
        name: r.get(6)?,
        image: r.get(7)?,
        approval: r.get(8)?,
        replace_broken: r.get(9)?,
        then: then.as_deref().and_then(crate::proto::agent::After::parse),
        circuit: r.get(11)?,
    })
}

/// Stores `r` (its id is ignored); returns the new id.
pub fn create(conn: &Connection, r: &RegistrationRule, now: i64) -> Result<i64, DbError> {
    conn.execute(
        "INSERT INTO registration_rules (created_at, site, subnet, model, serial, grp, name_pattern, image, approval, replace_broken, after_task, circuit)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            now,
            r.site,
            r.subnet,
            r.model,
            r.serial,
            r.group,
            r.name,
            r.image,
            r.approval,
            r.replace_broken,
            r.then.map(|t| t.as_str()),
            r.circuit
        ],
    )
    .what("create registration rule")?;
    Ok(conn.last_insert_rowid())
}

pub fn list(conn: &Connection) -> Result<Vec<RegistrationRule>, DbError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM registration_rules ORDER BY id"
        ))
        .what("list registration rules")?;
    let rows = st.query_map([], row).what("list registration rules")?;
    rows.collect::<Result<_, _>>()
        .what("list registration rules")
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<RegistrationRule>, DbError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM registration_rules WHERE id = ?1"),
        [id],
        row,
    )
    .optional()
    .what("get registration rule")
}

/// Removes rule `id`; false if there was none.
pub fn remove(conn: &Connection, id: i64) -> Result<bool, DbError> {
    Ok(conn
        .execute("DELETE FROM registration_rules WHERE id = ?1", [id])
        .what("remove registration rule")?
        == 1)
}
