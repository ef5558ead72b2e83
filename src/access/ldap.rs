//! Staff logins against the directory they already have (OpenLDAP, Active Directory): bind as
//! the user with their password, read their groups, map groups to a role and sites (`[ldap]`).

use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope as LdapScope, SearchEntry};

use super::Role;

/// `[ldap]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapConfig {
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// The DN to bind as, `{user}` replaced by the (escaped) login name:
    /// `uid={user},ou=people,dc=example,dc=org`, or `{user}@example.org` for Active Directory.
    pub bind_dn: String,
    /// Where to search groups the user is a member of; `None`: read the user entry's
    /// `memberOf` (Active Directory, OpenLDAP's memberof overlay).
    pub group_base: Option<String>,
    /// The group search filter, `{dn}` the user's DN and `{user}` their login name (escaped).
    pub group_filter: String,
    /// Group DN (compared without case) → role and sites.
    pub map: Vec<GroupMap>,
    pub timeout: Duration,
}

/// Default `group_filter`: groupOfNames, groupOfUniqueNames and posixGroup.
pub const DEFAULT_GROUP_FILTER: &str = "(|(member={dn})(uniqueMember={dn})(memberUid={user}))";

/// One `[[ldap.map]]`: members of `group` get `role` (and, operators, `sites`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMap {
    pub group: String,
    pub role: Role,
    pub sites: Vec<String>,
}

/// What a directory login grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub sites: Vec<String>,
    /// The mapped groups it came from.
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("wrong user name or password")]
    WrongPassword,
    #[error("{user} is in no directory group that [ldap] maps to a bootcast role (their groups: {groups})")]
    NoGroup { user: String, groups: String },
    #[error("cannot reach the directory {url}: {cause}; check [ldap] url and the network")]
    Unreachable { url: String, cause: String },
    #[error("the directory {url} answered an error: {cause}")]
    Directory { url: String, cause: String },
}

/// The role and sites of `groups` (DNs) under `map`: the highest role any of them maps to;
/// the sites of every operator group. `None`: no group is mapped.
pub fn grant_of(map: &[GroupMap], groups: &[String]) -> Option<Grant> {
    let hits: Vec<&GroupMap> = map
        .iter()
        .filter(|m| groups.iter().any(|g| g.eq_ignore_ascii_case(&m.group)))
        .collect();
    let role = hits.iter().map(|m| m.role).max()?;
    let mut sites: Vec<String> = Vec::new();
    if role == Role::Operator {
        for m in hits.iter().filter(|m| m.role == Role::Operator) {
            for s in &m.sites {
                if !sites.contains(s) {
                    sites.push(s.clone());
                }
            }
        }
    }
    Some(Grant {
        role,
        sites,
        groups: hits.iter().map(|m| m.group.clone()).collect(),
    })
}

/// Logs `user` in: a bind with their password, then their groups, then [`grant_of`].
pub async fn login(cfg: &LdapConfig, user: &str, password: &str) -> Result<Grant, LdapError> {
    // an empty password is an unauthenticated bind, which directories accept: never a login
    if password.is_empty() || !super::valid_user_name(user) {
        return Err(LdapError::WrongPassword);
    }
    let dir = |cause: ldap3::LdapError| LdapError::Directory {
        url: cfg.url.clone(),
        cause: cause.to_string(),
    };
    let settings = LdapConnSettings::new().set_conn_timeout(cfg.timeout);
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &cfg.url)
        .await
        .map_err(|e| LdapError::Unreachable {
            url: cfg.url.clone(),
            cause: e.to_string(),
        })?;
    ldap3::drive!(conn);
    ldap.with_timeout(cfg.timeout);
    let dn = cfg.bind_dn.replace("{user}", &ldap3::dn_escape(user));
    let bound = ldap.simple_bind(&dn, password).await.map_err(dir)?;
    if bound.rc == 49 {
        return Err(LdapError::WrongPassword);
    }
    bound.success().map_err(dir)?;
    let groups: Vec<String> = match &cfg.group_base {
        Some(base) => {
            let filter = cfg
                .group_filter
                .replace("{dn}", &ldap3::ldap_escape(&dn))
                .replace("{user}", &ldap3::ldap_escape(user));
            search(&mut ldap, cfg, (base, LdapScope::Subtree), &filter, "1.1")
                .await?
                .into_iter()
                .map(|e| SearchEntry::construct(e).dn)
                .collect()
        }
        None => search(
            &mut ldap,
            cfg,
            (&dn, LdapScope::Base),
            "(objectClass=*)",
            "memberOf",
        )
        .await?
        .into_iter()
        .flat_map(|e| {
            SearchEntry::construct(e)
                .attrs
                .remove("memberOf")
                .unwrap_or_default()
        })
        .collect(),
    };
    let _ = ldap.unbind().await;
    grant_of(&cfg.map, &groups).ok_or_else(|| LdapError::NoGroup {
        user: user.to_string(),
        groups: if groups.is_empty() {
            "none".into()
        } else {
            groups.join("; ")
        },
    })
}

/// The entries of one search, asking for one attribute (`1.1`: none).
async fn search(
    ldap: &mut ldap3::Ldap,
    cfg: &LdapConfig,
    (base, scope): (&str, LdapScope),
    filter: &str,
    attr: &str,
) -> Result<Vec<ldap3::ResultEntry>, LdapError> {
    let dir = |cause: ldap3::LdapError| LdapError::Directory {
        url: cfg.url.clone(),
        cause: cause.to_string(),
    };
    ldap.with_timeout(cfg.timeout);
    let (entries, _) = ldap
        .search(base, scope, filter, vec![attr])
        .await
        .map_err(dir)?
        .success()
        .map_err(dir)?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_map_to_the_highest_role_and_the_operators_sites() {
        let m = |g: &str, role, sites: &[&str]| GroupMap {
            group: g.into(),
            role,
            sites: sites.iter().map(|s| s.to_string()).collect(),
        };
        let map = vec![
            m("cn=it-lycee,ou=groups,dc=x", Role::Operator, &["lycee"]),
            m("cn=it-college,ou=groups,dc=x", Role::Operator, &["college"]),
            m("cn=helpdesk,ou=groups,dc=x", Role::Viewer, &[]),
            m("cn=dsi,ou=groups,dc=x", Role::Admin, &[]),
        ];
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let one = grant_of(&map, &g(&["CN=IT-Lycee,ou=groups,dc=x"])).unwrap();
        assert_eq!(
            (one.role, one.sites),
            (Role::Operator, vec!["lycee".into()])
        );
        let two = grant_of(
            &map,
            &g(&[
                "cn=it-lycee,ou=groups,dc=x",
                "cn=it-college,ou=groups,dc=x",
                "cn=helpdesk,ou=groups,dc=x",
            ]),
        )
        .unwrap();
        assert_eq!(two.role, Role::Operator);
        assert_eq!(two.sites, vec!["lycee".to_string(), "college".to_string()]);
        let admin = grant_of(
            &map,
            &g(&["cn=dsi,ou=groups,dc=x", "cn=it-lycee,ou=groups,dc=x"]),
        );
        assert_eq!(
            admin.map(|a| (a.role, a.sites)),
            Some((Role::Admin, vec![]))
        );
        assert_eq!(grant_of(&map, &g(&["cn=students,dc=x"])), None);
        assert_eq!(grant_of(&map, &[]), None);
    }
}
