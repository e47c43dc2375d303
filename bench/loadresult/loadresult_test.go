package loadresult

import "testing"

func TestRank(t *testing.T) {
	for _, tc := range []struct {
		n    int
		q    float64
		want int
	}{
		{1, 0.5, 0},
		{10, 0, 0},
		{10, 0.5, 4},
		{10, 0.9, 8},
		{10, 0.99, 9},
		{10, 1, 9},
		{1000, 0.999, 998},
		{1000, 0.99, 989},
		{3, 0.5, 1},
	} {
		if got := Rank(tc.n, tc.q); got != tc.want {
			t.Errorf("Rank(%d, %v) = %d, want %d", tc.n, tc.q, got, tc.want)
		}
	}
}
