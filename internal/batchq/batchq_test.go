package batchq

import (
	"sync"
	"testing"
)

func TestAddWakesOncePerBatch(t *testing.T) {
	q := New[int](8, 3)
	for i := 1; i <= 5; i++ {
		if !q.Add(i) {
			t.Fatalf("Add %d refused below the size", i)
		}
		woken := len(q.Ready()) == 1
		if want := i >= 3; woken != want {
			t.Fatalf("after %d items (wake at 3) the writer is woken: %v, want %v", i, woken, want)
		}
	}
	<-q.Ready()
	if got := q.Take(); len(got) != 5 || got[0] != 1 || got[4] != 5 {
		t.Fatalf("Take = %v, want [1 2 3 4 5]", got)
	}
	if q.Len() != 0 {
		t.Fatalf("Len %d after Take, want 0", q.Len())
	}
}

func TestAddRefusesWhenFull(t *testing.T) {
	q := New[int](2, 2)
	if !q.Add(1) || !q.Add(2) {
		t.Fatal("Add refused below the size")
	}
	if q.Add(3) {
		t.Fatal("a third item accepted by a queue of 2")
	}
	b := q.Take()
	q.Give(b)
	if !q.Add(4) {
		t.Fatal("Add refused after Take")
	}
	if got := q.Take(); len(got) != 1 || got[0] != 4 {
		t.Fatalf("Take = %v, want [4]", got)
	}
}

// TestConcurrentAddTake: no item is lost or duplicated when handlers add
// while the writer takes and gives back (run with -race).
func TestConcurrentAddTake(t *testing.T) {
	const producers, each = 4, 5000
	q := New[int](producers*each, 64)
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range each {
				for !q.Add(p*each + i) {
				}
			}
		})
	}
	seen := make([]bool, producers*each)
	got := 0
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		case <-q.Ready():
		}
		b := q.Take()
		for _, v := range b {
			if seen[v] {
				t.Fatalf("item %d taken twice", v)
			}
			seen[v] = true
			got++
		}
		q.Give(b)
	}
	for _, v := range q.Take() {
		seen[v] = true
		got++
	}
	if got != producers*each {
		t.Fatalf("%d items taken, want %d", got, producers*each)
	}
}
