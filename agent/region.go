package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/iamlet/iamlet/metadata"
)

// nodeRegion asks the node's IMDS for the region. The agent's own requests reach the node's IMDS once host-rules has
// exempted this pod's cgroup; after a rollout the table still names the old pod's, so for a moment the request is
// refused: it is asked again, with backoff, for up to regionWait rather than crash-looping the agent.
func nodeRegion(ctx context.Context, endpoint, fallback string, log *slog.Logger) (string, error) {
	if fallback != "" {
		return fallback, nil
	}
	if endpoint == "" {
		return "", errors.New("no region: set --region, or --node-imds so the agent can ask the node")
	}
	node, err := metadata.NewNodeClient(endpoint)
	if err != nil {
		return "", err
	}
	var region string
	err = askAgain(ctx, regionWait, func(err error) bool {
		log.Warn("asking the node's IMDS for the region; asking again", "error", err.Error())
		return true
	}, func(ctx context.Context) (err error) {
		region, err = node.Region(ctx)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("asking the node's IMDS for the region (set --region to skip): %w", err)
	}
	log.Info("region from the node's IMDS", "region", region)
	return region, nil
}

const regionWait = 30 * time.Second
