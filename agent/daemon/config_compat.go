package daemon

import "github.com/custos-agent/custos/agent/config"

// Compatibility names for the configuration, which lives in agent/config now (issue 13). They keep the
// code that still says daemon.Config compiling while the daemon is split; remove them once every user
// imports agent/config.
type (
	Config          = config.Config
	TransportConfig = config.TransportConfig
	PeerConfig      = config.PeerConfig
)

// ErrConfig is config.ErrConfig.
var ErrConfig = config.ErrConfig

// LoadConfig is config.LoadConfig.
func LoadConfig(path string) (*Config, string, error) { return config.LoadConfig(path) }

// ParseConfig is config.ParseConfig.
func ParseConfig(data []byte) (*Config, error) { return config.ParseConfig(data) }

// InferTransport is config.InferTransport.
func InferTransport(addr string) string { return config.InferTransport(addr) }
