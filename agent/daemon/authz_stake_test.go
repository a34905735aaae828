package daemon

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/audit"
)

// TestStakeTableRollback (issue 20 finding 8): a stake table older than the one stored is refused with a
// message saying so; with force it is installed and audited as a rollback. Before the fix the older table
// replaced the newer one silently (the install succeeded).
func TestStakeTableRollback(t *testing.T) {
	ctx := context.Background()
	d, home, cust, sock := startOwnAdmin(t)
	self := cust.ID().String()
	signer, err := cust.Signer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	newer, err := consensus.SignStakeTable(ctx, signer, cust.ID(), []consensus.Stake{{Agent: self, Amount: 9}}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	older, err := consensus.SignStakeTable(ctx, signer, cust.ID(), []consensus.Stake{{Agent: self, Amount: 1}}, now.Add(-30*time.Second), time.Hour) // after the inception, less the skew
	if err != nil {
		t.Fatal(err)
	}
	if err := control.Call(ctx, sock, api.OpStakeSet, api.StakeSetArgs{Table: string(newer.Encode())}, nil); err != nil {
		t.Fatal(err)
	}
	err = control.Call(ctx, sock, api.OpStakeSet, api.StakeSetArgs{Table: string(older.Encode())}, nil)
	if control.CodeOf(err) != control.CodeBadRequest || !strings.Contains(err.Error(), "rollback refused") {
		t.Fatalf("installing an older table: %v, want bad_request with rollback refused", err)
	}
	if st, err := d.authz.CurrentStakes(); err != nil || st.Amount(cust.ID()) != 9 {
		t.Fatalf("the table in force after the refused rollback: %v %v", st, err)
	}
	if err := control.Call(ctx, sock, api.OpStakeSet, api.StakeSetArgs{Table: string(newer.Encode())}, nil); err != nil {
		t.Fatalf("installing the same table again: %v", err)
	}
	if err := control.Call(ctx, sock, api.OpStakeSet, api.StakeSetArgs{Table: string(older.Encode()), Force: true}, nil); err != nil {
		t.Fatalf("a forced rollback: %v", err)
	}
	if st, err := d.authz.CurrentStakes(); err != nil || st.Amount(cust.ID()) != 1 {
		t.Fatalf("the table in force after the forced rollback: %v %v", st, err)
	}
	found := false
	if err := audit.Query(ctx, filepath.Join(home, AuditDir), audit.Filter{Types: []string{string(authz.StakeInstalled)}}, func(e audit.Entry) error {
		found = found || e.Details["rollback"] == true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatal("no stake.installed record with rollback true")
	}
}
