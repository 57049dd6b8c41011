#!/usr/bin/env bash
# Prints the three Secrets the dev overlay needs, with fresh random passwords, as YAML for
# `kubectl apply`. Nothing is written to disk; run it once per cluster (a second run would
# change the passwords that RabbitMQ and MongoDB already stored in their volumes):
#
#   deploy/k8s/dev-secrets.sh | kubectl apply -f -
#
# - corral-admin           admin-key: the operator's admin key for the gateway (CORRAL_ADMIN_KEY)
# - rabbitmq-default-user  host, port, username, password: what the RabbitMQ Cluster Operator
#                          would make in prod; the dev broker takes its user from it
# - corral-mongodb         username, password, connectionString.standard: the dev MongoDB's
#                          root user and the session store's CORRAL_MONGO_URL
set -euo pipefail

namespace="${NAMESPACE:-corral}"

random() {
    # URL-safe characters only: the passwords end up inside URLs.
    local chars
    chars="$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    printf '%s' "${chars:0:$1}"
}

secret() {
    kubectl create secret generic "$1" --namespace "$namespace" --dry-run=client -o yaml "${@:2}"
}

admin_key="$(random 43)"
rabbit_password="$(random 32)"
mongo_password="$(random 32)"

# The namespace may not exist yet when the secrets are applied first.
kubectl create namespace "$namespace" --dry-run=client -o yaml
echo "---"
secret corral-admin --from-literal=admin-key="$admin_key"
echo "---"
secret rabbitmq-default-user \
    --from-literal=host=rabbitmq \
    --from-literal=port=5672 \
    --from-literal=username=corral \
    --from-literal=password="$rabbit_password"
echo "---"
secret corral-mongodb \
    --from-literal=username=corral \
    --from-literal=password="$mongo_password" \
    --from-literal=connectionString.standard="mongodb://corral:${mongo_password}@mongodb:27017/?authSource=admin&directConnection=true"
