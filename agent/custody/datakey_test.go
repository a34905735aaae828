package custody

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/atrest"
)

// TestDataKeySurvivesRotation: the state's data key is wrapped by the identity's keystore, not by its
// signing key, so a rotation that destroys the old key at once leaves the sealed state readable.
func TestDataKeySurvivesRotation(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	c := e.init(false)
	log := slog.New(slog.DiscardHandler)
	box, err := atrest.ForHome(ctx, e.home, c, log)
	if err != nil || box == nil {
		t.Fatalf("ForHome: %v (box %v)", err, box != nil)
	}
	sealed := box.Seal([]byte("tasks.in"), []byte("task input before the rotation"))
	if _, err := c.Rotate(ctx, RotateRequest{Grace: time.Hour, DestroyOld: true}); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	_ = c.Close()
	box2, err := atrest.ForHome(ctx, e.home, e.open(), log)
	if err != nil {
		t.Fatalf("ForHome after the rotation: %v", err)
	}
	if v, err := box2.Open([]byte("tasks.in"), sealed); err != nil || string(v) != "task input before the rotation" {
		t.Fatalf("after the rotation the state does not open: %q, %v", v, err)
	}
}
