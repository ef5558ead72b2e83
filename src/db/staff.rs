//! Staff accounts, their personal API tokens and browser sessions (secrets stored as their
//! SHA-256, see [`crate::access::secret_hash`]), and the audit trail of every change.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{DbError, QueryContext};
use crate::access::{parse_sites, Role};

/// A staff account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// An operator's sites.
    pub sites: Vec<String>,
    /// `local` (password here) or `ldap` (password in the directory, role from its groups at
    /// each login).
    pub source: String,
    pub created: i64,
    pub last_login: Option<i64>,
    /// Personal API tokens held.
    pub tokens: i64,
}

fn user_row(r: &rusqlite::Row) -> rusqlite::Result<User> {
    let role: String = r.get(1)?;
    Ok(User {
        name: r.get(0)?,
        role: role.parse().unwrap_or(Role::Viewer),
        sites: parse_sites(&r.get::<_, String>(2)?),
        source: r.get(3)?,
        created: r.get(4)?,
        last_login: r.get(5)?,
        tokens: r.get(6)?,
    })
}

const USER_COLUMNS: &str = "name, role, sites, source, created, last_login,
    (SELECT COUNT(*) FROM user_tokens t WHERE t.user = users.name)";

/// Adds a local account; `false` if the name is taken.
pub fn add(
    c: &Connection,
    name: &str,
    role: Role,
    sites: &[String],
    password_hash: &str,
    now: i64,
) -> Result<bool, DbError> {
    let n = c
        .execute(
            "INSERT OR IGNORE INTO users (name, role, sites, password, source, created)
             VALUES (?1, ?2, ?3, ?4, 'local', ?5)",
            params![name, role.as_str(), sites.join(","), password_hash, now],
        )
        .what("add a user")?;
    Ok(n == 1)
}

/// Records a directory user at their login, with the role and sites their groups give now.
pub fn upsert_directory(
    c: &Connection,
    name: &str,
    role: Role,
    sites: &[String],
    now: i64,
) -> Result<(), DbError> {
    c.execute(
        "INSERT INTO users (name, role, sites, password, source, created, last_login)
         VALUES (?1, ?2, ?3, NULL, 'ldap', ?4, ?4)
         ON CONFLICT(name) DO UPDATE SET role = ?2, sites = ?3, last_login = ?4
         WHERE source = 'ldap'",
        params![name, role.as_str(), sites.join(","), now],
    )
    .what("record a directory user")?;
    Ok(())
}

pub fn get(c: &Connection, name: &str) -> Result<Option<User>, DbError> {
    c.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1"),
        [name],
        user_row,
    )
    .optional()
    .what("read a user")
}

pub fn list(c: &Connection) -> Result<Vec<User>, DbError> {
    let mut st = c
        .prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))
        .what("list users")?;
    let rows = st.query_map([], user_row).what("list users")?;
    rows.collect::<Result<_, _>>().what("list users")
}

/// A local account's password hash (`None`: no such local account).
pub fn password_hash(c: &Connection, name: &str) -> Result<Option<String>, DbError> {
    Ok(c.query_row(
        "SELECT password FROM users WHERE name = ?1 AND source = 'local'",
        [name],
        |r| r.get::<_, Option<String>>(0),
    )
    .optional()
    .what("read a password hash")?
    .flatten())
}

/// Sets a local account's password and ends its sessions; `false`: no such local account.
pub fn set_password(c: &Connection, name: &str, hash: &str) -> Result<bool, DbError> {
    let n = c
        .execute(
            "UPDATE users SET password = ?2 WHERE name = ?1 AND source = 'local'",
            params![name, hash],
        )
        .what("set a password")?;
    c.execute("DELETE FROM staff_sessions WHERE user = ?1", [name])
        .what("end a user's sessions")?;
    Ok(n == 1)
}

pub fn touch_login(c: &Connection, name: &str, now: i64) -> Result<(), DbError> {
    c.execute(
        "UPDATE users SET last_login = ?2 WHERE name = ?1",
        params![name, now],
    )
    .what("record a login")?;
    Ok(())
}

/// Removes an account with its tokens and sessions; `false`: no such user.
pub fn remove(c: &Connection, name: &str) -> Result<bool, DbError> {
    c.execute("DELETE FROM user_tokens WHERE user = ?1", [name])
        .what("remove a user's tokens")?;
    c.execute("DELETE FROM staff_sessions WHERE user = ?1", [name])
        .what("end a user's sessions")?;
    let n = c
        .execute("DELETE FROM users WHERE name = ?1", [name])
        .what("remove a user")?;
    Ok(n == 1)
}

/// Stores a personal token (its hash); returns its id.
pub fn add_token(
    c: &Connection,
    user: &str,
    hash: &str,
    label: Option<&str>,
    now: i64,
) -> Result<i64, DbError> {
    c.execute(
        "INSERT INTO user_tokens (user, hash, label, created) VALUES (?1, ?2, ?3, ?4)",
        params![user, hash, label, now],
    )
    .what("add a token")?;
    Ok(c.last_insert_rowid())
}

/// The account holding the token of this hash.
pub fn token_user(c: &Connection, hash: &str) -> Result<Option<User>, DbError> {
    c.query_row(
        &format!(
            "SELECT {USER_COLUMNS} FROM users
             WHERE name = (SELECT user FROM user_tokens WHERE hash = ?1)"
        ),
        [hash],
        user_row,
    )
    .optional()
    .what("find a token")
}

/// Revokes a user's tokens (all, or the one of `id`); how many were.
pub fn revoke_tokens(c: &Connection, user: &str, id: Option<i64>) -> Result<usize, DbError> {
    c.execute(
        "DELETE FROM user_tokens WHERE user = ?1 AND (?2 IS NULL OR id = ?2)",
        params![user, id],
    )
    .what("revoke tokens")
}

/// A browser session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub sites: Vec<String>,
    pub csrf: String,
    pub expires: i64,
}

/// Opens a session of `hash` (the cookie's SHA-256) for `user`, with the role and sites it
/// was granted at login; drops sessions that are over.
pub fn open_session(
    c: &Connection,
    hash: &str,
    s: &Session,
    now: i64,
    from: Option<&str>,
) -> Result<(), DbError> {
    c.execute("DELETE FROM staff_sessions WHERE expires <= ?1", [now])
        .what("drop ended sessions")?;
    c.execute(
        "INSERT INTO staff_sessions (hash, user, role, sites, csrf, created, expires, from_addr)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            hash,
            s.user,
            s.role.as_str(),
            s.sites.join(","),
            s.csrf,
            now,
            s.expires,
            from
        ],
    )
    .what("open a session")?;
    Ok(())
}

/// The session of this cookie hash, if open at `now`.
pub fn session(c: &Connection, hash: &str, now: i64) -> Result<Option<Session>, DbError> {
    c.query_row(
        "SELECT user, role, sites, csrf, expires FROM staff_sessions
         WHERE hash = ?1 AND expires > ?2",
        params![hash, now],
        |r| {
            let role: String = r.get(1)?;
            Ok(Session {
                user: r.get(0)?,
                role: role.parse().unwrap_or(Role::Viewer),
                sites: parse_sites(&r.get::<_, String>(2)?),
                csrf: r.get(3)?,
                expires: r.get(4)?,
            })
        },
    )
    .optional()
    .what("read a session")
}

pub fn close_session(c: &Connection, hash: &str) -> Result<(), DbError> {
    c.execute("DELETE FROM staff_sessions WHERE hash = ?1", [hash])
        .what("close a session")?;
    Ok(())
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    #[serde(default)]
    pub id: i64,
    pub at: i64,
    pub user: String,
    /// The client's address (`cli` for a command on the server).
    pub from: Option<String>,
    /// `POST /api/v1/tasks`, `login`, `cli: task create ...`.
    pub action: String,
    /// The request's body (secrets removed), or what it was about.
    pub detail: Option<String>,
    /// The HTTP status it got (`None`: a CLI command, which ran).
    pub status: Option<u16>,
}

pub fn audit(c: &Connection, e: &AuditEntry) -> Result<i64, DbError> {
    c.execute(
        "INSERT INTO audit (at, user, from_addr, action, detail, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![e.at, e.user, e.from, e.action, e.detail, e.status],
    )
    .what("record an audit entry")?;
    Ok(c.last_insert_rowid())
}

/// Logins refused for a wrong password or an unknown user since `since` (from the trail):
/// for user `user`, and from address `from` (any user).
pub fn failed_logins(
    c: &Connection,
    user: &str,
    from: &str,
    since: i64,
) -> Result<(u32, u32), DbError> {
    c.query_row(
        "SELECT coalesce(sum(user = ?2), 0), coalesce(sum(from_addr = ?3), 0) FROM audit
         WHERE at >= ?1 AND action = 'login refused' AND status = 401",
        params![since, user, from],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .what("count failed logins")
}

/// Which audit entries: newest first, before id `before`, of one user, matching a text.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub user: Option<String>,
    pub q: Option<String>,
    pub before: Option<i64>,
    pub since: Option<i64>,
    pub limit: u32,
}

/// A page of the trail and how many entries match in all.
pub fn audit_page(c: &Connection, q: &AuditQuery) -> Result<(Vec<AuditEntry>, i64), DbError> {
    let like = q.q.as_deref().map(super::hosts::like_pattern);
    let filter = "(?1 IS NULL OR user = ?1)
        AND (?2 IS NULL OR action LIKE ?2 ESCAPE '\\' OR detail LIKE ?2 ESCAPE '\\')
        AND (?3 IS NULL OR at >= ?3)";
    let total: i64 = c
        .query_row(
            &format!("SELECT COUNT(*) FROM audit WHERE {filter}"),
            params![q.user, like, q.since],
            |r| r.get(0),
        )
        .what("count audit entries")?;
    let mut st = c
        .prepare(&format!(
            "SELECT id, at, user, from_addr, action, detail, status FROM audit
             WHERE {filter} AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5"
        ))
        .what("list audit entries")?;
    let rows = st
        .query_map(params![q.user, like, q.since, q.before, q.limit], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at: r.get(1)?,
                user: r.get(2)?,
                from: r.get(3)?,
                action: r.get(4)?,
                detail: r.get(5)?,
                status: r.get(6)?,
            })
        })
        .what("list audit entries")?;
    Ok((
        rows.collect::<Result<_, _>>().what("list audit entries")?,
        total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn accounts_tokens_sessions_and_the_trail() {
        let db = Db::open_in_memory().unwrap();
        let c = db.lock();
        let sites = vec!["lycee".to_string()];
        assert!(add(&c, "ana", Role::Operator, &sites, "h1", 10).unwrap());
        assert!(
            !add(&c, "ana", Role::Admin, &[], "h2", 11).unwrap(),
            "name taken"
        );
        let u = get(&c, "ana").unwrap().unwrap();
        assert_eq!(
            (u.role, u.sites.clone(), u.source.as_str()),
            (Role::Operator, sites.clone(), "local")
        );
        assert_eq!(password_hash(&c, "ana").unwrap().as_deref(), Some("h1"));
        let id = add_token(&c, "ana", "th", Some("script"), 12).unwrap();
        assert_eq!(
            token_user(&c, "th").unwrap().map(|u| u.name),
            Some("ana".into())
        );
        assert_eq!(get(&c, "ana").unwrap().unwrap().tokens, 1);
        let s = Session {
            user: "ana".into(),
            role: Role::Operator,
            sites: sites.clone(),
            csrf: "c".into(),
            expires: 100,
        };
        open_session(&c, "sh", &s, 20, Some("10.99.0.9")).unwrap();
        assert_eq!(session(&c, "sh", 99).unwrap(), Some(s.clone()));
        assert_eq!(session(&c, "sh", 100).unwrap(), None, "over at its expiry");
        assert!(set_password(&c, "ana", "h3").unwrap());
        assert_eq!(
            session(&c, "sh", 50).unwrap(),
            None,
            "a new password ends sessions"
        );
        // a directory user never overwrites a local account of the same name
        upsert_directory(&c, "ana", Role::Admin, &[], 30).unwrap();
        assert_eq!(get(&c, "ana").unwrap().unwrap().role, Role::Operator);
        upsert_directory(&c, "bob", Role::Viewer, &[], 30).unwrap();
        upsert_directory(&c, "bob", Role::Operator, &sites, 31).unwrap();
        let bob = get(&c, "bob").unwrap().unwrap();
        assert_eq!(
            (bob.role, bob.source.as_str(), bob.last_login),
            (Role::Operator, "ldap", Some(31))
        );
        assert_eq!(password_hash(&c, "bob").unwrap(), None);
        assert_eq!(revoke_tokens(&c, "ana", Some(id + 1)).unwrap(), 0);
        assert!(remove(&c, "ana").unwrap());
        assert_eq!(
            token_user(&c, "th").unwrap(),
            None,
            "tokens go with the user"
        );
        for (i, a) in ["POST /api/v1/tasks", "DELETE /api/v1/tasks/3", "login"]
            .iter()
            .enumerate()
        {
            audit(
                &c,
                &AuditEntry {
                    id: 0,
                    at: 40 + i as i64,
                    user: if i == 2 { "bob".into() } else { "ana".into() },
                    from: Some("10.99.0.9".into()),
                    action: a.to_string(),
                    detail: Some("{\"group\":\"r1_a\"}".into()),
                    status: Some(200),
                },
            )
            .unwrap();
        }
        let all = AuditQuery {
            limit: 2,
            ..Default::default()
        };
        let (page, total) = audit_page(&c, &all).unwrap();
        assert_eq!(total, 3);
        assert_eq!(
            page.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            ["login", "DELETE /api/v1/tasks/3"]
        );
        let next = AuditQuery {
            before: Some(page[1].id),
            ..all.clone()
        };
        assert_eq!(audit_page(&c, &next).unwrap().0.len(), 1);
        let ana = AuditQuery {
            user: Some("ana".into()),
            q: Some("r1_".into()),
            ..all
        };
        assert_eq!(audit_page(&c, &ana).unwrap().1, 2);
    }
}
