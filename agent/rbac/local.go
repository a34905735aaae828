package rbac

import (
	"context"
	"fmt"
	"os/user"
	"slices"
	"strconv"
)

// Cred is the kernel-reported identity of a control-socket caller (SO_PEERCRED): it cannot be forged by
// the caller, unlike anything it writes on the socket.
type Cred struct {
	UID uint32
	GID uint32
	PID int32
}

// String reads "uid=N gid=M".
func (c Cred) String() string { return fmt.Sprintf("uid=%d gid=%d", c.UID, c.GID) }

// LocalConfig is the configuration form of the control-socket mapping: user and group names (or numeric
// IDs) to roles. In the agent's config file:
//
//	authorization:
//	  local:
//	    users:  {custos: [agent_operator, system_admin], "1001": [task_submitter]}
//	    groups: {custos-ops: [agent_operator]}
type LocalConfig struct {
	Users  map[string][]string `yaml:"users" json:"users"`
	Groups map[string][]string `yaml:"groups" json:"groups"`
}

// LocalRoles maps a control-socket caller to roles by uid and primary gid. The zero value maps nobody
// (every caller is refused with no_grant).
type LocalRoles struct {
	users  map[uint32][]Role
	groups map[uint32][]Role
}

// Lookups resolve names in LocalConfig; nil fields use os/user.
type Lookups struct {
	User  func(name string) (uint32, error)
	Group func(name string) (uint32, error)
}

// Compile resolves names and checks roles. Unknown roles, unknown user or group names, and the same user
// written twice (by name and by number) are errors.
func (c LocalConfig) Compile(l Lookups) (LocalRoles, error) {
	if l.User == nil {
		l.User = func(n string) (uint32, error) {
			u, err := user.Lookup(n)
			if err != nil {
				return 0, err
			}
			v, err := strconv.ParseUint(u.Uid, 10, 32)
			return uint32(v), err
		}
	}
	if l.Group == nil {
		l.Group = func(n string) (uint32, error) {
			g, err := user.LookupGroup(n)
			if err != nil {
				return 0, err
			}
			v, err := strconv.ParseUint(g.Gid, 10, 32)
			return uint32(v), err
		}
	}
	users, err := compileMap("users", c.Users, l.User)
	if err != nil {
		return LocalRoles{}, err
	}
	groups, err := compileMap("groups", c.Groups, l.Group)
	if err != nil {
		return LocalRoles{}, err
	}
	return LocalRoles{users: users, groups: groups}, nil
}

func compileMap(what string, m map[string][]string, lookup func(string) (uint32, error)) (map[uint32][]Role, error) {
	out := map[uint32][]Role{}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		var id uint32
		if v, err := strconv.ParseUint(k, 10, 32); err == nil {
			id = uint32(v)
		} else {
			v, err := lookup(k)
			if err != nil {
				return nil, fmt.Errorf("authorization.local.%s: %q is neither a number nor a known name: %v", what, k, err)
			}
			id = v
		}
		if _, dup := out[id]; dup {
			return nil, fmt.Errorf("authorization.local.%s: %q names id %d, which is already listed", what, k, id)
		}
		var rs []Role
		for _, s := range m[k] {
			r, err := ParseRole(s)
			if err != nil {
				return nil, fmt.Errorf("authorization.local.%s.%s: %v", what, k, err)
			}
			if !slices.Contains(rs, r) {
				rs = append(rs, r)
			}
		}
		out[id] = rs
	}
	return out, nil
}

// NewLocalRoles builds a mapping directly from numeric IDs (tests, programmatic configuration).
func NewLocalRoles(users, groups map[uint32][]Role) LocalRoles {
	l := LocalRoles{users: map[uint32][]Role{}, groups: map[uint32][]Role{}}
	for k, v := range users {
		l.users[k] = slices.Clone(v)
	}
	for k, v := range groups {
		l.groups[k] = slices.Clone(v)
	}
	return l
}

// RolesFor returns the roles of a caller: those of its uid and of its primary gid, in the seed's order.
// Supplementary groups are not consulted: SO_PEERCRED does not carry them, and reading them from /proc
// races with pid reuse.
func (l LocalRoles) RolesFor(c Cred) []Role {
	var rs []Role
	rs = append(rs, l.users[c.UID]...)
	rs = append(rs, l.groups[c.GID]...)
	return uniq(rs)
}

// AuthorizeLocal is the control socket's check: the caller's credentials (from PeerCred) map to roles
// through the configured LocalRoles, and one of those roles must carry the permission op needs. It returns
// nil or a *Denial (no_grant when the caller maps to no role, permission_denied otherwise).
func (a *Authorizer) AuthorizeLocal(ctx context.Context, c Cred, op Operation) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	req, err := Required(op)
	if err != nil {
		return err
	}
	a.mu.RLock()
	roles := a.cfg.Roles
	local := a.cfg.Local
	a.mu.RUnlock()
	rs := local.RolesFor(c)
	if req.Permission == "" {
		return nil
	}
	if len(rs) == 0 {
		return a.denied(deny(NoGrant, c.String(), req.Permission, "", "local caller %s has no role: map its user or group in authorization.local (%s needs %s)", c, op, req.Permission))
	}
	for _, r := range rs {
		if roles.Has(r, req.Permission) {
			return nil
		}
	}
	return a.denied(deny(PermissionDenied, c.String(), req.Permission, "", "local caller %s holds %s; %s needs %s (roles with it: %s)", c, joinRoles(rs), op, req.Permission, rolesHint(roles, req.Permission)))
}
