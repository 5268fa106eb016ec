#!/bin/sh
# Takes a consistent logical backup of one MySQL database into $BACKUP_DIR, then keeps the newest
# $BACKUP_KEEP complete backups. Run by the operator's backup CronJob in the MySQL image (mysql:8.4).
#
# Env: MYSQL_HOST, MYSQL_PORT (default 3306), MYSQL_USER, MYSQL_PWD (read by mysqldump itself),
# MYSQL_DATABASE, BACKUP_DIR, BACKUP_NAME, BACKUP_KEEP.
#
# Files: $BACKUP_NAME.sql.gz (the gzipped dump) and $BACKUP_NAME.sql.gz.sha256 (sha256sum's format).
# A backup is complete when its checksum exists: the dump is written under a temporary name
# (*.partial), renamed once whole, and its checksum written last, so a crash at any point leaves
# nothing that looks complete. Backups are ordered by name: BACKUP_NAME must sort in time order
# (a UTC timestamp such as chatsys-20250101T020000Z).
#
# What the image has: docker-library/mysql 8.4/Dockerfile.oracle builds on oraclelinux:9-slim,
# installs gzip and findutils, and mysql-community-server-minimal, which brings mysql and mysqldump
# (the image's docs, docker-library/docs mysql/content.md "Creating database dumps", run mysqldump in
# it); docker-library/repo-info repos/mysql/local/8.4-oracle.md lists bash (the /bin/sh) and
# coreutils-single (sha256sum, cut, mv). The mysqldump options below are in both MySQL's option table
# (mysql/mysql-server client/mysqldump.cc) and MariaDB's.
set -eu

fail() {
	echo "mysql-backup: $*" >&2
	exit 1
}

: "${MYSQL_HOST:?}" "${MYSQL_USER:?}" "${MYSQL_DATABASE:?}" "${BACKUP_DIR:?}" "${BACKUP_NAME:?}"
port=${MYSQL_PORT:-3306}
case ${BACKUP_KEEP:-} in
'' | *[!0-9]* | 0) fail "BACKUP_KEEP must be a positive number, not '${BACKUP_KEEP:-}'" ;;
esac
case $BACKUP_NAME in
*[!A-Za-z0-9._-]* | .*) fail "BACKUP_NAME may hold only letters, digits, '.', '_' and '-': '$BACKUP_NAME'" ;;
esac

client() {
	"$@" --host="$MYSQL_HOST" --port="$port" --user="$MYSQL_USER"
}

# A database that a restore is loading (or that one left half loaded) is no backup: one taken now
# would push a good backup out of the ones kept. mysql-restore.sh creates this table first and drops
# it last.
marker=$(client mysql --batch --skip-column-names --execute="SELECT COUNT(*) FROM information_schema.tables \
	WHERE table_schema = '$MYSQL_DATABASE' AND table_name = '_chatsys_restore'")
[ "$marker" = 0 ] || fail "a restore into $MYSQL_DATABASE is running or was interrupted: no backup taken"

cd "$BACKUP_DIR"
dump=$BACKUP_NAME.sql.gz
[ ! -e "$dump.sha256" ] || fail "$BACKUP_DIR/$dump exists already"

# POSIX sh has no pipefail: a pipeline's status is gzip's alone. mysqldump's own status goes out on
# descriptor 3 into $dumped, so a dump that fails halfway fails the script instead of leaving a
# truncated file that gzip compressed without complaint.
dumped=$({ {
	status=0
	client mysqldump --single-transaction --routines --triggers --events --hex-blob \
		--no-tablespaces "$MYSQL_DATABASE" || status=$?
	echo "$status" >&3
} | gzip -c >"$dump.partial"; } 3>&1)
if [ "$dumped" != 0 ]; then
	rm -f -- "$dump.partial"
	fail "mysqldump failed (status $dumped): no backup written"
fi
gzip -t "$dump.partial"
mv -f "$dump.partial" "$dump"
sha256sum "$dump" >"$dump.sha256.partial"
mv -f "$dump.sha256.partial" "$dump.sha256"
echo "mysql-backup: wrote $BACKUP_DIR/$dump"

# Keep the newest $BACKUP_KEEP complete backups. The glob lists them oldest first; each goes
# checksum first, so one interrupted here is left incomplete rather than complete without its dump.
set -- *.sql.gz.sha256
[ -e "$1" ] || set --
excess=$(($# - BACKUP_KEEP))
for checksum; do
	[ "$excess" -gt 0 ] || break
	rm -f -- "$checksum" "${checksum%.sha256}"
	excess=$((excess - 1))
done
# Leftovers of runs that died: temporaries, and dumps whose checksum was never written.
for file in *.partial *.sql.gz; do
	case $file in
	*.partial) rm -f -- "$file" ;;
	*) [ -e "$file.sha256" ] || rm -f -- "$file" ;;
	esac
done
