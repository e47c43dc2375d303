package creds

// MaxBackgroundFetches is maxBackgroundFetches, for the external tests.
const MaxBackgroundFetches = maxBackgroundFetches
