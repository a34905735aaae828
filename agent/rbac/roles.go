// Package rbac is role-based access control for Custos (DESIGN 6): the seed's five roles and their
// permissions (configs/roles.yaml), role grants and revocations signed by a configured system
// administrator, the table of the permission every message type and control-socket operation needs, and
// Authorize, which answers "may this agent do that?" with either nil or a *Denial carrying a reason code.
//
// The package is a library: the handshake validator, the message dispatcher and the control socket call it
// (docs/authorization.md says exactly where).
package rbac

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Role is one of the seed's five roles.
type Role string

// The seed's roles ("Access Control" / "Roles").
const (
	SystemAdmin    Role = "system_admin"
	AgentOperator  Role = "agent_operator"
	TaskSubmitter  Role = "task_submitter"
	PeerNode       Role = "peer_node"
	GatewayService Role = "gateway_service"
)

// AllRoles lists the roles in the seed's order.
var AllRoles = []Role{SystemAdmin, AgentOperator, TaskSubmitter, PeerNode, GatewayService}

// Permission is one of the seed's fourteen permissions.
type Permission string

// The seed's permissions ("Access Control" / "Permissions").
const (
	ManageAgents        Permission = "manage_agents"
	ManageNetwork       Permission = "manage_network"
	ManageSecurity      Permission = "manage_security"
	ViewMetrics         Permission = "view_metrics"
	SubmitTasks         Permission = "submit_tasks"
	ViewStatus          Permission = "view_status"
	ManageLocalAgent    Permission = "manage_local_agent"
	ViewResults         Permission = "view_results"
	ProcessTasks        Permission = "process_tasks"
	ShareResults        Permission = "share_results"
	DiscoverPeers       Permission = "discover_peers"
	APIAccess           Permission = "api_access"
	RateLimiting        Permission = "rate_limiting"
	ProtocolTranslation Permission = "protocol_translation"
)

// AllPermissions lists the permissions in the seed's order.
var AllPermissions = []Permission{
	ManageAgents, ManageNetwork, ManageSecurity, ViewMetrics,
	SubmitTasks, ViewStatus, ManageLocalAgent,
	ViewResults,
	ProcessTasks, ShareResults, DiscoverPeers,
	APIAccess, RateLimiting, ProtocolTranslation,
}

// ParseRole checks that s names one of the five roles.
func ParseRole(s string) (Role, error) {
	if slices.Contains(AllRoles, Role(s)) {
		return Role(s), nil
	}
	return "", fmt.Errorf("unknown role %q: the roles are %s", s, joinRoles(AllRoles))
}

// ParsePermission checks that s names one of the fourteen permissions.
func ParsePermission(s string) (Permission, error) {
	if slices.Contains(AllPermissions, Permission(s)) {
		return Permission(s), nil
	}
	return "", fmt.Errorf("unknown permission %q: the permissions are %s", s, joinPerms(AllPermissions))
}

// Roles maps each role to its permissions. The zero value grants nothing; use SeedRoles or ParseRoles.
type Roles struct {
	perms map[Role][]Permission
}

// SeedRoles is the seed's table, exactly as configs/roles.yaml ships it.
func SeedRoles() *Roles {
	return &Roles{perms: map[Role][]Permission{
		SystemAdmin:    {ManageAgents, ManageNetwork, ManageSecurity, ViewMetrics},
		AgentOperator:  {SubmitTasks, ViewStatus, ManageLocalAgent},
		TaskSubmitter:  {SubmitTasks, ViewResults},
		PeerNode:       {ProcessTasks, ShareResults, DiscoverPeers},
		GatewayService: {APIAccess, RateLimiting, ProtocolTranslation},
	}}
}

// Has reports whether role r carries permission p.
func (rs *Roles) Has(r Role, p Permission) bool {
	return rs != nil && slices.Contains(rs.perms[r], p)
}

// Permissions returns the permissions of r in file order.
func (rs *Roles) Permissions(r Role) []Permission {
	if rs == nil {
		return nil
	}
	return slices.Clone(rs.perms[r])
}

// RolesWith returns every role that carries p, in the seed's role order.
func (rs *Roles) RolesWith(p Permission) []Role {
	var out []Role
	for _, r := range AllRoles {
		if rs.Has(r, p) {
			out = append(out, r)
		}
	}
	return out
}

// Equal reports whether two tables give the same permissions to the same roles (order ignored).
func (rs *Roles) Equal(o *Roles) bool {
	for _, r := range AllRoles {
		a, b := slices.Clone(rs.Permissions(r)), slices.Clone(o.Permissions(r))
		slices.Sort(a)
		slices.Sort(b)
		if !slices.Equal(a, b) {
			return false
		}
	}
	return true
}

// Encode writes the table in the seed's YAML form ("roles:" then each role's permission list).
func (rs *Roles) Encode() []byte {
	var b bytes.Buffer
	b.WriteString("roles:\n")
	for i, r := range AllRoles {
		if i > 0 {
			b.WriteString("\n")
		}
		ps := rs.Permissions(r)
		if len(ps) == 0 {
			fmt.Fprintf(&b, "  %s: []\n", r)
			continue
		}
		fmt.Fprintf(&b, "  %s:\n", r)
		for _, p := range ps {
			fmt.Fprintf(&b, "    - %s\n", p)
		}
	}
	return b.Bytes()
}

// MaxRolesFileSize bounds a roles file.
const MaxRolesFileSize = 64 << 10

// ErrBadRoles marks every error of ParseRoles.
var ErrBadRoles = errors.New("invalid roles file")

// ParseRoles strictly reads a roles file in the seed's form:
//
//	roles:
//	  system_admin:
//	    - manage_agents
//	  ...
//
// It refuses unknown top-level fields, unknown roles, unknown permissions, a permission listed twice for one
// role, a role missing from the file (list it with [] to give it nothing), a second YAML document, and
// anything larger than MaxRolesFileSize. Permissions may be moved between roles: the vocabulary is fixed,
// the assignment is the operator's (docs/adr/0010).
func ParseRoles(data []byte) (*Roles, error) {
	if len(data) > MaxRolesFileSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrBadRoles, len(data), MaxRolesFileSize)
	}
	var file struct {
		Roles yaml.Node `yaml:"roles"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: the file is empty: it needs a \"roles:\" mapping", ErrBadRoles)
		}
		return nil, fmt.Errorf("%w: %v", ErrBadRoles, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: more than one YAML document: keep one \"roles:\" mapping", ErrBadRoles)
	}
	n := &file.Roles
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%w: \"roles\" must be a mapping of role name to permission list", ErrBadRoles)
	}
	rs := &Roles{perms: map[Role][]Permission{}}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		r, err := ParseRole(k.Value)
		if k.Kind != yaml.ScalarNode || err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrBadRoles, k.Line, err)
		}
		if _, dup := rs.perms[r]; dup {
			return nil, fmt.Errorf("%w: line %d: role %s listed twice", ErrBadRoles, k.Line, r)
		}
		if v.Kind != yaml.SequenceNode {
			return nil, fmt.Errorf("%w: line %d: role %s: want a list of permissions (use [] for none)", ErrBadRoles, v.Line, r)
		}
		ps := []Permission{}
		for _, e := range v.Content {
			if e.Kind != yaml.ScalarNode || e.Tag != "!!str" {
				return nil, fmt.Errorf("%w: line %d: role %s: each permission is a plain name", ErrBadRoles, e.Line, r)
			}
			p, err := ParsePermission(e.Value)
			if err != nil {
				return nil, fmt.Errorf("%w: line %d: role %s: %v", ErrBadRoles, e.Line, r, err)
			}
			if slices.Contains(ps, p) {
				return nil, fmt.Errorf("%w: line %d: role %s lists %s twice", ErrBadRoles, e.Line, r, p)
			}
			ps = append(ps, p)
		}
		rs.perms[r] = ps
	}
	for _, r := range AllRoles {
		if _, ok := rs.perms[r]; !ok {
			return nil, fmt.Errorf("%w: role %s is missing (list it, with [] if it should grant nothing)", ErrBadRoles, r)
		}
	}
	return rs, nil
}

func joinRoles(rs []Role) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

func joinPerms(ps []Permission) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = string(p)
	}
	return strings.Join(s, ", ")
}
