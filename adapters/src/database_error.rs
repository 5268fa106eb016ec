//! How a database's errors read as the core's: what says the database cannot serve us now is
//! unavailable (retried), what it refuses for the data is rejected.

use chatsys_core::error::{Backend, CoreError};

/// Classifies a database error. Whatever says the database cannot serve us right now is `Unavailable`
/// (the API answers 503, the worker retries): deadlocks, lock waits, lost or refused connections,
/// wrong credentials or privileges, a database or table that does not exist (yet), a server shutting
/// down or read-only. Only a statement the database refuses for its data is a rejected command (the
/// worker dead-letters it), so a misconfigured deployment never sends good commands to
/// `<queue>.quorum.dead`.
pub fn from_sqlx(err: sqlx::Error) -> CoreError {
    use sqlx::mysql::MySqlDatabaseError;
    let transient = match &err {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<MySqlDatabaseError>() {
            Some(mysql) => mysql_unavailable(mysql.number()),
            // SQLite: 5 busy, 6 locked, 261 busy recovery, 517 busy snapshot.
            None => {
                matches!(db.code().as_deref(), Some("5" | "6" | "261" | "517"))
                    || db.message().contains("database is locked")
            }
        },
        _ => true,
    };
    if transient {
        CoreError::unavailable(Backend::Database, err)
    } else {
        CoreError::Rejected(err.to_string())
    }
}

/// Classifies a failed migration run: only a database that cannot be reached or used yet (what
/// [`from_sqlx`] calls unavailable, before any migration ran or while one was cut off) is worth
/// waiting for; the migrator's own refusals and a migration's SQL error are [`CoreError::Schema`].
pub fn from_migrate(err: sqlx::migrate::MigrateError) -> CoreError {
    use sqlx::migrate::MigrateError;
    match err {
        MigrateError::Execute(inner) => match from_sqlx(inner) {
            CoreError::Rejected(detail) => CoreError::Schema(detail),
            other => other,
        },
        MigrateError::ExecuteMigration(inner, version) => match inner {
            sqlx::Error::Database(db) => {
                CoreError::Schema(format!("migration {version} failed: {}", db.message()))
            }
            other => CoreError::unavailable(
                Backend::Database,
                format!("while executing migration {version}: {other}"),
            ),
        },
        refused => CoreError::Schema(refused.to_string()),
    }
}

/// MySQL and MariaDB error numbers (not SQLSTATEs, which group these with data errors) that say the
/// database, not the statement's data, is the problem.
fn mysql_unavailable(number: u16) -> bool {
    matches!(
        number,
        // deadlock, lock wait timeout, record changed since last read
        1213 | 1205 | 1020
        // too many connections, per-user connection limits, host blocked or not allowed
        | 1040 | 1203 | 1226 | 1129 | 1130
        // access denied: database, user/password, command, column, auth plugin, privilege
        | 1044 | 1045 | 1142 | 1143 | 1227 | 1698
        // unknown database, table or column: the schema is not (yet) what this version expects
        | 1049 | 1146 | 1054
        // server shutdown, connection or query killed, network read/write errors
        | 1053 | 1927 | 1317 | 1158 | 1159 | 1160 | 1161
        // statement timeouts (MySQL, MariaDB), read-only server (e.g. during a failover)
        | 3024 | 1969 | 1290 | 1792 | 1836
    )
}
