#!/bin/sh
# Loads a backup written by mysql-backup.sh into $MYSQL_DATABASE (created if missing). Run by the
# operator's restore Job in the MySQL image (mysql:8.4; what it holds: see mysql-backup.sh).
#
# Env: MYSQL_HOST, MYSQL_PORT (default 3306), MYSQL_USER, MYSQL_PWD (read by mysql itself),
# MYSQL_DATABASE, BACKUP_DIR, BACKUP_NAME: loads $BACKUP_DIR/$BACKUP_NAME.sql.gz.
#
# It refuses a backup whose checksum is missing or does not match, or that gzip finds damaged, and a
# database that holds chatsys data: a restore never overwrites what it did not write itself.
#
# The marker: before loading, the restore creates the table _chatsys_restore in the database, holding
# the backup's name and checksum, and it drops that table only once the whole dump is in. A restore
# that finds the marker of the same backup (same name, same checksum) is that restore resuming after
# a crash: the data it finds is its own half-loaded dump, which it loads again (the dump drops and
# recreates each of its tables). The marker of another backup is refused. mysql-backup.sh refuses to
# back up a database holding the marker, so a half-loaded database never becomes a kept backup.
set -eu

fail() {
	echo "mysql-restore: $*" >&2
	exit 1
}

: "${MYSQL_HOST:?}" "${MYSQL_USER:?}" "${MYSQL_DATABASE:?}" "${BACKUP_DIR:?}" "${BACKUP_NAME:?}"
port=${MYSQL_PORT:-3306}
case $BACKUP_NAME in
*[!A-Za-z0-9._-]* | .*) fail "BACKUP_NAME may hold only letters, digits, '.', '_' and '-': '$BACKUP_NAME'" ;;
esac
dump=$BACKUP_DIR/$BACKUP_NAME.sql.gz

[ -f "$dump.sha256" ] || fail "$dump.sha256 is missing: the backup is incomplete or absent; nothing restored"
[ -f "$dump" ] || fail "$dump is missing; nothing restored"
# The hash alone is compared: the file name sha256sum wrote is the dump's own.
expected=$(cut -d ' ' -f 1 "$dump.sha256")
actual=$(sha256sum "$dump" | cut -d ' ' -f 1)
[ -n "$expected" ] && [ "$expected" = "$actual" ] ||
	fail "$dump does not match its checksum (expected '$expected', found $actual): refusing to restore it"
gzip -t "$dump" 2>/dev/null || fail "$dump is not a whole gzip file: refusing to restore it"

sql() {
	mysql --host="$MYSQL_HOST" --port="$port" --user="$MYSQL_USER" --batch --skip-column-names "$@"
}
in_database() {
	sql --database="$MYSQL_DATABASE" --execute="$1"
}
has_table() {
	[ "$(sql --execute="SELECT COUNT(*) FROM information_schema.tables \
		WHERE table_schema = '$MYSQL_DATABASE' AND table_name = '$1'")" != 0 ]
}

sql --execute="CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\`"
resuming=
if has_table _chatsys_restore; then
	resuming=$(in_database "SELECT CONCAT(backup, ' ', sha256) FROM _chatsys_restore")
fi
if [ -n "$resuming" ]; then
	[ "$resuming" = "$BACKUP_NAME $actual" ] ||
		fail "$MYSQL_DATABASE holds the marker of another restore ($resuming): finish that one, or drop the database"
	echo "mysql-restore: resuming the interrupted restore of $BACKUP_NAME into $MYSQL_DATABASE"
else
	# Every row counts, deleted ones too: a tombstone is still data someone could want back.
	for table in applications chats messages; do
		if has_table "$table" && [ "$(in_database "SELECT EXISTS (SELECT 1 FROM \`$table\`)")" != 0 ]; then
			fail "$MYSQL_DATABASE already holds chatsys data ($table has rows): refusing to restore over it"
		fi
	done
	# An empty marker is a restore that died before its row: it had loaded nothing yet.
	in_database "CREATE TABLE IF NOT EXISTS _chatsys_restore (backup VARCHAR(255) NOT NULL, sha256 CHAR(64) NOT NULL);
		INSERT INTO _chatsys_restore VALUES ('$BACKUP_NAME', '$actual')"
fi

# No pipefail in POSIX sh: gzip's status comes out on descriptor 3, mysql's is the pipeline's.
unzipped=$({ {
	status=0
	gzip -dc "$dump" || status=$?
	echo "$status" >&3
} | sql --database="$MYSQL_DATABASE" >&2; } 3>&1) || fail "loading $dump failed: run the restore again to resume it"
[ "$unzipped" = 0 ] || fail "reading $dump failed: run the restore again to resume it"
in_database "DROP TABLE _chatsys_restore"
echo "mysql-restore: restored $BACKUP_NAME into $MYSQL_DATABASE"
