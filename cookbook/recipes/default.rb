#
# Cookbook:: vesemir_agent
# Recipe:: default
#
# Installs the vesemir agent binary (sha256-verified) and its playbooks,
# writes the controller's CA, enrolls the node once under its Chef node name,
# installs the systemd unit, enables and starts the agent.
#

attrs = node['vesemir_agent']
agent_toml = vesemir_agent_toml
service_name = attrs['service_name']
enrolled = ::File.exist?(agent_toml)
# Helper results go into locals: resource blocks run with the resource as
# self, where the recipe's helper methods are not defined.
binary_source = vesemir_agent_binary_source
enroll_command = vesemir_agent_enroll_command

# Fail early, with the attribute's name, rather than half way through.
raise "node['vesemir_agent']['binary']['checksum'] (sha256) is required" if attrs['binary']['checksum'].to_s.empty?
unless enrolled
  raise "node['vesemir_agent']['controller'] (HOST:PORT) is required to enroll" if attrs['controller'].to_s.empty?
  if attrs['ca_cert'].to_s.empty? && attrs['ca_cert_url'].to_s.empty?
    raise "node['vesemir_agent']['ca_cert'] or ['ca_cert_url'] is required to enroll"
  end
end

directory ::File.dirname(attrs['ca_cert_path']) do
  owner 'root'
  group 'root'
  mode '0755'
  recursive true
end

# The binary: downloaded to Chef's cache, verified against the sha256, then
# moved into place. A new binary restarts the agent (a job cut short is
# reported "interrupted" by the agent's journal, never "succeeded").
remote_file attrs['binary']['path'] do
  source binary_source
  checksum attrs['binary']['checksum']
  owner 'root'
  group 'root'
  mode '0755'
  notifies :restart, "service[#{service_name}]", :delayed
end

# The playbooks the controller asks for by name. Extra playbooks someone put
# there are left alone (no purge).
remote_directory attrs['playbook_dir'] do
  source 'playbooks'
  owner 'root'
  group 'root'
  mode '0755'
  files_owner 'root'
  files_group 'root'
  files_mode '0644'
  recursive true
end

# The controller's CA: content from an attribute, or a URL with its sha256.
if !attrs['ca_cert'].to_s.empty?
  file attrs['ca_cert_path'] do
    content attrs['ca_cert']
    owner 'root'
    group 'root'
    mode '0644'
  end
elsif !attrs['ca_cert_url'].to_s.empty?
  remote_file attrs['ca_cert_path'] do
    source attrs['ca_cert_url']
    checksum attrs['ca_cert_checksum'] unless attrs['ca_cert_checksum'].to_s.empty?
    owner 'root'
    group 'root'
    mode '0644'
  end
end

directory attrs['data_dir'] do
  owner 'root'
  group 'root'
  mode '0700'
  recursive true
end

# Enroll once: the key is generated here, the token is spent. Skipped when
# agent.toml exists (re-enroll: delete it, or run enroll --force by hand).
# The token goes through VESEMIR_ENROLL_TOKEN, not argv, so it is not in the
# process list; `sensitive` keeps it out of Chef's logs and reports. It is
# read (attribute or data bag) only when this resource actually runs.
# A bound method, called only if the resource runs (lazy).
enroll_token = method(:vesemir_agent_enroll_token)
execute 'vesemir-agent enroll' do
  command enroll_command
  environment lazy { { 'VESEMIR_ENROLL_TOKEN' => enroll_token.call } }
  creates agent_toml
  sensitive true
  notifies :restart, "service[#{service_name}]", :delayed
end

execute 'vesemir-agent systemctl daemon-reload' do
  command %w(systemctl daemon-reload)
  action :nothing
end

template "/etc/systemd/system/#{service_name}.service" do
  source 'vesemir-agent.service.erb'
  owner 'root'
  group 'root'
  mode '0644'
  variables(
    binary: attrs['binary']['path'],
    config: agent_toml,
    log_format: attrs['log_format']
  )
  notifies :run, 'execute[vesemir-agent systemctl daemon-reload]', :immediately
  notifies :restart, "service[#{service_name}]", :delayed
end

service service_name do
  supports status: true, restart: true
  action [:enable, :start]
end
