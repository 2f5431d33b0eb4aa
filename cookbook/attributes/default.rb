#
# Cookbook:: vesemir_agent
# Attributes:: default
#

# Controller QUIC/enrollment address, HOST:PORT (required to enroll).
default['vesemir_agent']['controller'] = nil

# The controller's CA certificate (its /var/lib/vesemir/ca.pem). Give either
# the PEM content, or a URL with the file's sha256.
default['vesemir_agent']['ca_cert'] = nil
default['vesemir_agent']['ca_cert_url'] = nil
default['vesemir_agent']['ca_cert_checksum'] = nil
# Where the CA is written on the VM (enroll copies it into the data dir).
default['vesemir_agent']['ca_cert_path'] = '/etc/vesemir-agent/controller-ca.pem'

# Enrollment token (`vesemir tokens create --ttl 1h --uses N`). Prefer a data
# bag item (encrypted data bags are decrypted with the node's secret file):
#   knife data bag create vesemir enrollment --secret-file ...
#   { "id": "enrollment", "token": "..." }
# The attribute wins when set; it is only read when the node is not enrolled.
default['vesemir_agent']['enroll_token'] = nil
default['vesemir_agent']['token_data_bag'] = 'vesemir'
default['vesemir_agent']['token_data_bag_item'] = 'enrollment'
default['vesemir_agent']['token_data_bag_key'] = 'token'

# State: key (0600, generated here, never leaves the VM), certificate,
# journal, agent.toml.
default['vesemir_agent']['data_dir'] = '/var/lib/vesemir-agent'
# The playbooks the controller asks for by name (deploy.yml, rollback.yml,
# restart.yml), shipped in files/default/playbooks.
default['vesemir_agent']['playbook_dir'] = '/usr/share/vesemir/playbooks'
# HAProxy admin socket, on VMs that run HAProxy; nil elsewhere.
default['vesemir_agent']['haproxy_socket'] = nil
# Host variables given to every playbook on this VM (--var K=V).
default['vesemir_agent']['vars'] = {}

# The agent binary: an http(s):// or file:// URL, or a local path, and its
# sha256 (required: the file is verified before it is installed).
default['vesemir_agent']['binary']['source'] = nil
default['vesemir_agent']['binary']['checksum'] = nil
default['vesemir_agent']['binary']['path'] = '/usr/bin/vesemir-agent'

# systemd
default['vesemir_agent']['service_name'] = 'vesemir-agent'
default['vesemir_agent']['log_format'] = 'json'
