#!/bin/sh
# Fetches one backup from an S3-compatible bucket into $BACKUP_DIR for mysql-restore.sh, which checks
# it. Runs in the amazon/aws-cli image (what it holds: see backup-s3-upload.sh).
#
# Env: S3_BUCKET, S3_PREFIX (a folder, default none), S3_ENDPOINT (default: AWS itself), BACKUP_DIR,
# BACKUP_NAME, and the AWS CLI's own credentials.
#
# The checksum is fetched first, so a backup the bucket holds incomplete fails here, and written last
# under its name: as on disk, a dump without its checksum is not a backup.
set -eu

fail() {
	echo "backup-s3-download: $*" >&2
	exit 1
}

: "${S3_BUCKET:?}" "${BACKUP_DIR:?}" "${BACKUP_NAME:?}"
prefix=${S3_PREFIX:-}
prefix=${prefix%/}
source=s3://$S3_BUCKET/${prefix:+$prefix/}

s3() {
	if [ -n "${S3_ENDPOINT:-}" ]; then
		aws --endpoint-url "$S3_ENDPOINT" s3 "$@"
	else
		aws s3 "$@"
	fi
}

cd "$BACKUP_DIR"
dump=$BACKUP_NAME.sql.gz
s3 cp --only-show-errors "$source$dump.sha256" "$dump.sha256.partial" ||
	fail "$source$dump.sha256 cannot be read: the backup is absent or incomplete"
s3 cp --only-show-errors "$source$dump" "$dump.partial"
mv -f "$dump.partial" "$dump"
mv -f "$dump.sha256.partial" "$dump.sha256"
echo "backup-s3-download: fetched $source$dump into $BACKUP_DIR"
