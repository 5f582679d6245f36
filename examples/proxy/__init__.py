"""cclb-proxy: an example reverse proxy for the Anthropic Messages API that runs cc-lb
plugins through cclb_wire's PluginHost. See README.md."""
