//! Per-image settings kept by the server (the store holds the bytes; this holds what staff
//! decided about an image): the post-deploy steps the agent runs after a restore.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{DbError, QueryContext};

/// What the agent does to the restored system before it reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostDeploy {
    /// Write the host's name (`bootcast host name`) into the restored system where the agent
    /// knows how: Linux root filesystems on ext2/3/4 (`/etc/hostname`). On by default.
    pub hostname: bool,
    /// On a disk larger than the image, grow this partition and its filesystem (NTFS,
    /// ext2/3/4) to fill the disk, moving the partitions after it to the disk's end (GPT
    /// only). Off (`None`) by default.
    #[serde(default)]
    pub grow: Option<u32>,
}

impl Default for PostDeploy {
    fn default() -> Self {
        PostDeploy {
            hostname: true,
            grow: None,
        }
    }
}

/// The post-deploy settings of image `image` (the defaults unless staff changed them).
pub fn post_deploy(conn: &Connection, image: &str) -> Result<PostDeploy, DbError> {
    let set: Option<PostDeploy> = conn
        .query_row(
            "SELECT set_hostname, grow FROM image_settings WHERE image = ?1",
            [image],
            |r| {
                Ok(PostDeploy {
                    hostname: r.get(0)?,
                    grow: r.get(1)?,
                })
            },
        )
        .optional()
        .what("get image settings")?;
    Ok(set.unwrap_or_default())
}

pub fn set_post_deploy(conn: &Connection, image: &str, pd: PostDeploy) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO image_settings (image, set_hostname, grow) VALUES (?1, ?2, ?3)
         ON CONFLICT(image) DO UPDATE SET set_hostname = excluded.set_hostname,
                                          grow = excluded.grow",
        params![image, pd.hostname, pd.grow],
    )
    .what("set image settings")?;
    Ok(())
}

/// An on/off setting of `image_settings` that is off until staff turn it on.
#[derive(Debug, Clone, Copy)]
enum Flag {
    AutoApprove,
    Raw,
}

impl Flag {
    fn column(self) -> &'static str {
        match self {
            Flag::AutoApprove => "auto_approve",
            Flag::Raw => "raw",
        }
    }
}

fn flag(conn: &Connection, image: &str, f: Flag) -> Result<bool, DbError> {
    let set: Option<bool> = conn
        .query_row(
            &format!("SELECT {} FROM image_settings WHERE image = ?1", f.column()),
            [image],
            |r| r.get(0),
        )
        .optional()
        .what("get image settings")?;
    Ok(set.unwrap_or(false))
}

fn set_flag(conn: &Connection, image: &str, f: Flag, on: bool) -> Result<(), DbError> {
    let col = f.column();
    conn.execute(
        &format!(
            "INSERT INTO image_settings (image, set_hostname, {col}) VALUES (?1, 1, ?2)
             ON CONFLICT(image) DO UPDATE SET {col} = excluded.{col}"
        ),
        params![image, on],
    )
    .what("set image settings")?;
    Ok(())
}

/// Whether captures of `image` become `latest` without staff approval (off by default: a
/// capture waits for `bootcast image approve NAME@VERSION`).
pub fn auto_approve(conn: &Connection, image: &str) -> Result<bool, DbError> {
    flag(conn, image, Flag::AutoApprove)
}

pub fn set_auto_approve(conn: &Connection, image: &str, on: bool) -> Result<(), DbError> {
    set_flag(conn, image, Flag::AutoApprove, on)
}

/// Whether `image` is captured raw, every byte (`bootcast image raw NAME on`), instead of only
/// what its filesystems use (off by default).
pub fn raw(conn: &Connection, image: &str) -> Result<bool, DbError> {
    flag(conn, image, Flag::Raw)
}

pub fn set_raw(conn: &Connection, image: &str, on: bool) -> Result<(), DbError> {
    set_flag(conn, image, Flag::Raw, on)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn defaults_until_set() {
        let db = Db::open_in_memory().unwrap();
        let c = db.lock();
        assert_eq!(
            post_deploy(&c, "win11").unwrap(),
            PostDeploy {
                hostname: true,
                grow: None
            }
        );
        assert!(!auto_approve(&c, "win11").unwrap());
        set_auto_approve(&c, "win11", true).unwrap();
        assert!(auto_approve(&c, "win11").unwrap());
        set_post_deploy(
            &c,
            "win11",
            PostDeploy {
                hostname: false,
                grow: None,
            },
        )
        .unwrap();
        assert!(
            auto_approve(&c, "win11").unwrap(),
            "one setting leaves the other"
        );
        assert_eq!(
            post_deploy(&c, "win11").unwrap(),
            PostDeploy {
                hostname: false,
                grow: None
            }
        );
        assert_eq!(post_deploy(&c, "demo").unwrap(), PostDeploy::default());
        set_post_deploy(
            &c,
            "win11",
            PostDeploy {
                hostname: true,
                grow: Some(3),
            },
        )
        .unwrap();
        assert_eq!(
            post_deploy(&c, "win11").unwrap(),
            PostDeploy {
                hostname: true,
                grow: Some(3)
            }
        );
    }
}
