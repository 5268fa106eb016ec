#!/bin/sh
# Copies one complete backup (see mysql-backup.sh) to an S3-compatible bucket, then keeps the newest
# $BACKUP_KEEP complete backups under the prefix. Run after mysql-backup.sh in the amazon/aws-cli
# image: aws/aws-cli docker/Dockerfile builds it on amazonlinux:2, whose bash is /bin/sh and whose
# coreutils has sha256sum (docker-library/repo-info repos/amazonlinux/local/2.md); its entrypoint is
# `aws`, so the container's command must be `sh`.
#
# Env: S3_BUCKET, S3_PREFIX (a folder, default none), S3_ENDPOINT (default: AWS itself), BACKUP_DIR,
# BACKUP_NAME, BACKUP_KEEP, and the AWS CLI's own credentials (AWS_ACCESS_KEY_ID, ...).
#
# As on disk, a backup in the bucket is complete when its .sha256 object exists: the dump is uploaded
# first, its checksum last (an object appears only once its upload has finished), and a prune removes
# the checksum before the dump.
set -eu

fail() {
	echo "backup-s3-upload: $*" >&2
	exit 1
}

: "${S3_BUCKET:?}" "${BACKUP_DIR:?}" "${BACKUP_NAME:?}"
case ${BACKUP_KEEP:-} in
'' | *[!0-9]* | 0) fail "BACKUP_KEEP must be a positive number, not '${BACKUP_KEEP:-}'" ;;
esac
prefix=${S3_PREFIX:-}
prefix=${prefix%/}
destination=s3://$S3_BUCKET/${prefix:+$prefix/}

s3() {
	if [ -n "${S3_ENDPOINT:-}" ]; then
		aws --endpoint-url "$S3_ENDPOINT" s3 "$@"
	else
		aws s3 "$@"
	fi
}

cd "$BACKUP_DIR"
dump=$BACKUP_NAME.sql.gz
[ -f "$dump.sha256" ] || fail "$BACKUP_DIR/$dump has no checksum: it is not a complete backup"
# What goes up must be what mysql-backup.sh wrote, or the bucket would keep a damaged copy as complete.
[ "$(cut -d ' ' -f 1 "$dump.sha256")" = "$(sha256sum "$dump" | cut -d ' ' -f 1)" ] ||
	fail "$BACKUP_DIR/$dump does not match its checksum: not uploaded"
s3 cp --only-show-errors "$dump" "$destination$dump"
s3 cp --only-show-errors "$dump.sha256" "$destination$dump.sha256"
echo "backup-s3-upload: uploaded $destination$dump"

# `aws s3 ls` prints "date time size key" per object; keys are file names (BACKUP_NAME is checked by
# mysql-backup.sh). Oldest first by name, as on disk.
listing=$(s3 ls "$destination")
checksums=$(echo "$listing" | while read -r _ _ _ key; do
	case $key in *.sql.gz.sha256) echo "$key" ;; esac
done | sort)
excess=$(($(echo "$checksums" | grep -c . || true) - BACKUP_KEEP))
for checksum in $checksums; do
	[ "$excess" -gt 0 ] || break
	s3 rm --only-show-errors "$destination$checksum"
	s3 rm --only-show-errors "$destination${checksum%.sha256}"
	excess=$((excess - 1))
done
# Dumps whose checksum never arrived: uploads that died.
echo "$listing" | while read -r _ _ _ key; do
	case $key in
	*.sql.gz) echo "$checksums" | grep -qxF "$key.sha256" || s3 rm --only-show-errors "$destination$key" ;;
	esac
done
