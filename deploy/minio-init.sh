#!/bin/sh
# Sets up the object store once MinIO answers (service minio-init, image minio/minio, which
# has `mc`); safe to run again. It creates the stores' bucket and the user the api, the
# dispatcher and the Ray workers log in as, allowed that bucket only: no other bucket, no
# administration. Its secrets are read at start-up, so that none is written in the repository:
#   /run/secrets/minio_root_password      the password of MinIO's root user (MINIO_ROOT_USER)
#   /run/secrets/crossfold_s3_secret_key  the secret key of the stores' user (STORE_USER)
# STORE_BUCKET: the bucket of CROSSFOLD_DATASET_STORE and CROSSFOLD_CHECKPOINT_STORE.
# SECRETS_DIR and MINIO_URL move the secrets and the server (tests).
set -eu

secrets_dir=${SECRETS_DIR:-/run/secrets}
server=${MINIO_URL:-http://minio:9000}
: "${MINIO_ROOT_USER:?}" "${STORE_BUCKET:?}" "${STORE_USER:?}"

read_secret() {
    if [ ! -s "$secrets_dir/$1" ]; then
        echo "minio-init: the secret $secrets_dir/$1 is missing or empty" >&2
        exit 1
    fi
    cat "$secrets_dir/$1"
}

root_password=$(read_secret minio_root_password)
store_secret=$(read_secret crossfold_s3_secret_key)

# mc keeps the root login in its configuration: a folder of this container only.
MC_CONFIG_DIR=$(mktemp -d)
export MC_CONFIG_DIR
mc alias set store "$server" "$MINIO_ROOT_USER" "$root_password" >/dev/null
mc mb --ignore-existing "store/$STORE_BUCKET"

policy="$MC_CONFIG_DIR/crossfold-stores.json"
cat > "$policy" <<JSON
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
   "Resource": ["arn:aws:s3:::$STORE_BUCKET"]},
  {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                 "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
   "Resource": ["arn:aws:s3:::$STORE_BUCKET/*"]}]}
JSON
mc admin policy create store crossfold-stores "$policy"
mc admin user add store "$STORE_USER" "$store_secret"
# mc refuses to attach a policy the user already has: on a second run, check it instead.
if ! mc admin policy attach store crossfold-stores --user "$STORE_USER"; then
    case $(mc admin user info store "$STORE_USER") in
        *crossfold-stores*) ;;
        *) echo "minio-init: could not give $STORE_USER the policy crossfold-stores" >&2; exit 1 ;;
    esac
fi
echo "minio-init: bucket $STORE_BUCKET and user $STORE_USER are ready"
