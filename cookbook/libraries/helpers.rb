#
# Cookbook:: vesemir_agent
# Library:: helpers
#

module VesemirAgent
  # Helpers for the default recipe.
  module Helpers
    # Path of agent.toml, written by `vesemir-agent enroll`.
    def vesemir_agent_toml
      ::File.join(node['vesemir_agent']['data_dir'], 'agent.toml')
    end

    # A local path becomes a file:// URL; URLs are kept.
    def vesemir_agent_binary_source
      src = node['vesemir_agent']['binary']['source']
      raise "node['vesemir_agent']['binary']['source'] is not set" if src.nil? || src.to_s.empty?
      src =~ %r{\A[a-z][a-z0-9+.-]*://}i ? src : "file://#{::File.expand_path(src)}"
    end

    # The enrollment token: the attribute, else the data bag item. Only
    # called (lazily) when the node still has to enroll.
    def vesemir_agent_enroll_token
      attrs = node['vesemir_agent']
      token = attrs['enroll_token']
      if token.nil? || token.to_s.empty?
        item = data_bag_item(attrs['token_data_bag'], attrs['token_data_bag_item'])
        token = item[attrs['token_data_bag_key']]
      end
      if token.nil? || token.to_s.strip.empty?
        raise "vesemir_agent: no enrollment token (node['vesemir_agent']['enroll_token'] or data bag " \
              "#{attrs['token_data_bag']}/#{attrs['token_data_bag_item']} key #{attrs['token_data_bag_key']})"
      end
      token.to_s.strip
    end

    # The `vesemir-agent enroll` command line, without the token (that goes
    # through VESEMIR_ENROLL_TOKEN so it is not in `ps` or Chef's logs).
    def vesemir_agent_enroll_command
      attrs = node['vesemir_agent']
      cmd = [
        attrs['binary']['path'], 'enroll',
        '--controller', attrs['controller'],
        '--ca-cert', attrs['ca_cert_path'],
        '--name', node.name,
        '--data-dir', attrs['data_dir'],
        '--playbook-dir', attrs['playbook_dir'],
      ]
      cmd += ['--haproxy-socket', attrs['haproxy_socket']] if attrs['haproxy_socket']
      (attrs['vars'] || {}).sort.each { |k, v| cmd += ['--var', "#{k}=#{v}"] }
      cmd
    end
  end
end

Chef::Recipe.include(VesemirAgent::Helpers)
